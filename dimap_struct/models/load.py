"""Load: resolve a model name through the family registry, build the model and load
its weights. Everything family-specific (names, aliases, builders, pretrained weights,
preprocessing, classifier width) is the family adapter's (`models.adapters`).

Weights come from (a) the family's pretrained source (default: timm / the Hugging Face Hub,
torchvision's DEFAULT weights, or this package's reference weights), (b) a local checkpoint
(`.pth`, `.pt`, `.safetensors`: see `state_dict` for the layouts understood and the checks), or
(c) a seeded random initialisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .adapters import (FamilyAdapter, adapter_for_model, family_for_name, is_foreign_name, suggestions,
                       supported_families)
from .reference import sha256_file
from .state_dict import load_into, read_checkpoint


@dataclass
class LoadedModel:
    """A model in eval mode, its family adapter and where its weights came from."""

    model: nn.Module
    adapter: FamilyAdapter
    name: str
    """Canonical name (aliases resolved, pretrained tag kept)."""
    weights: str
    """Human-readable provenance, e.g. 'random init (seed 0)'."""
    pretrained: bool
    data_config: dict
    """Preprocessing in timm's format (`FamilyAdapter.data_config`)."""
    model_kwargs: dict = field(default_factory=dict)
    """Constructor options that, with `name`, rebuild the architecture (pruned checkpoints)."""

    @property
    def random_init(self) -> bool:
        """Weights are a random initialisation (accuracy figures mean nothing)."""
        return self.weights.startswith("random init")


def resolve_name(name: str) -> str:
    """The canonical name of a supported model; UserError for unknown names (with close
    suggestions) and for models of no supported family."""
    found = family_for_name(name)
    if found is not None:
        return found[1]
    if is_foreign_name(name):
        raise unsupported(name)
    close = suggestions(name)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown model '{name}'{hint}")


def load_model(name: str, *, checkpoint: str | os.PathLike | None = None, pretrained: bool = True, seed: int = 0,
               **model_kwargs) -> LoadedModel:
    """Build `name` (see `resolve_name`) and load weights: `checkpoint` if given, else the
    family's pretrained weights if `pretrained`, else a random initialisation seeded by `seed`.
    `model_kwargs` go to the family's builder (e.g. `img_size=`, `num_classes=` for timm)."""
    found = family_for_name(name)
    if found is None:
        resolve_name(name)  # raises the right UserError
    family, name = found
    stored = read_checkpoint(checkpoint) if checkpoint is not None else None  # fail fast on bad files
    fetch = checkpoint is None and pretrained
    torch.manual_seed(seed)
    model = family.build(name, pretrained=fetch, **model_kwargs)
    adapter = family(model)
    if stored is not None:
        load_into(model, adapter, stored, checkpoint, name)
        where = f"key '{stored.key}', " if stored.key else ""
        weights = f"checkpoint {Path(checkpoint).name} ({where}sha256 {sha256_file(checkpoint)[:12]})"
    elif fetch:
        weights = family.weights_description(model, name)
    else:
        weights = f"random init (seed {seed}): NOT pretrained"
    model.eval()
    return LoadedModel(model, adapter, name, weights, fetch, adapter.data_config(),
                       {**adapter.build_kwargs(), **model_kwargs})


def wrap_model(model: nn.Module, name: str | None = None) -> LoadedModel:
    """Wrap an already-built model (Python API) with its adapter. Its name defaults to timm's
    architecture name when the model carries one (so pruned checkpoints can rebuild it)."""
    adapter = adapter_for_model(model)
    if adapter is None:
        raise unsupported(name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__)
    name = name or adapter.default_name(model)
    model = adapter.model.eval()
    return LoadedModel(model, adapter, name, "given in memory", False, adapter.data_config(),
                       adapter.build_kwargs())


def unsupported(name: str) -> UserError:
    return UserError(f"'{name}' is not a supported model yet; supported families: {supported_families()}")
