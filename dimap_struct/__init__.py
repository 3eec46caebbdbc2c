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

import importlib

from .errors import UserError  # noqa: E402

_LAZY = {"CompressOptions": "options", "load_recipe": "options", "load_model": "models",
         "load_pruned": "prune.replay", "CompressionResult": "pipeline", "compress": "pipeline", "Report": "report"}
"""Imported on first use: the command-line entry points import this package, and loading torch
here would make Ctrl-C during start-up a traceback and slow every --help."""

__all__ = ["CompressOptions", "CompressionResult", "Report", "UserError", "compress", "load_model", "load_pruned",
           "load_recipe", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
