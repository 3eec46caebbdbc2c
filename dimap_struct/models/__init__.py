"""Models: loading by name, checkpoints, the shipped reference models, the lean form, and the
family adapters (the only code that knows where a family keeps its heads and MLPs)."""
from .load import LoadedModel, load_model, resolve_name, wrap_model
from .state_dict import Checkpoint, read_checkpoint
from .checkpoint import save_pruned

__all__ = ["Checkpoint", "LoadedModel", "load_model", "read_checkpoint", "resolve_name", "save_pruned", "wrap_model"]
