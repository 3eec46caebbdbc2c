"""Stage 1, models: loading by name, checkpoints, the shipped reference models, and the family
adapters (the only code that knows where a family keeps its heads and MLPs)."""
from .load import LoadedModel, load_any, load_model, resolve_name, wrap_model
from .state_dict import Checkpoint, read_checkpoint
from .checkpoint import build_architecture, load_pruned, save_pruned

__all__ = ["Checkpoint", "LoadedModel", "build_architecture", "load_any", "load_model", "load_pruned",
           "read_checkpoint", "resolve_name", "save_pruned", "wrap_model"]
