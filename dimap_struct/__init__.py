"""dimap-struct: data-free DIMAP importance carried to heads and channels of Swin Transformers,
cut for real, exported to a dense ONNX model.

    import dimap_struct
    result = dimap_struct.compress("swin_t", 0.5, pretrained=False, output="swin_t_small.onnx")
    result.model       # the pruned nn.Module
    result.report      # a typed Report: MACs / params before and after, per stage, module and block
    options = dimap_struct.CompressOptions(model="swin_t", flops=0.6, criterion="lamp-global")
    dimap_struct.compress("swin_t", options)
    dimap_struct.load_pruned("x.pt")   # rebuild a model saved with compress(..., save_pt="x.pt")
"""
__version__ = "0.2.0"

from .errors import UserError  # noqa: E402
from .options import CompressOptions, load_recipe  # noqa: E402
from .models import load_model, load_pruned  # noqa: E402
from .pipeline import CompressionResult, compress  # noqa: E402
from .report import Report  # noqa: E402

__all__ = ["CompressOptions", "CompressionResult", "Report", "UserError", "compress", "load_model", "load_pruned",
           "load_recipe", "__version__"]
