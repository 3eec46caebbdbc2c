"""Stage 1, models: loading by name, checkpoints, the shipped reference models, and the family
adapters (the only code that knows where a family keeps its heads and MLPs)."""
from .load import LoadedModel, load_any, load_model, read_state_dict, resolve_name, wrap_model
from .checkpoint import build_architecture, load_pruned, save_pruned

__all__ = ["LoadedModel", "build_architecture", "load_any", "load_model", "load_pruned", "read_state_dict",
           "resolve_name", "save_pruned", "wrap_model"]
