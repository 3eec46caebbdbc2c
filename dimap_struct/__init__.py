"""dimap-struct: data-free DIMAP importance carried to heads and channels of Swin Transformers,
cut for real, exported to a dense ONNX model.

    import dimap_struct
    result = dimap_struct.compress("swin_t", 0.5, pretrained=False, output="swin_t_small.onnx")
    result.model       # the pruned nn.Module
    result.report      # MACs / params before and after, per stage, module and block
    dimap_struct.load_pruned("x.pt")   # rebuild a model saved with compress(..., save_pt="x.pt")
"""
__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .models import load_model  # noqa: E402
from .pipeline import CompressionResult, compress  # noqa: E402
from .checkpoint import load_pruned  # noqa: E402

__all__ = ["CompressionResult", "UserError", "compress", "load_model", "load_pruned", "__version__"]
