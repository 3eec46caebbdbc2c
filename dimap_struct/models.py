"""Stage 1, load: resolve a model name, build it with timm and load its weights.

Weights come from (a) timm / the Hugging Face Hub (default; its cache and HF_HUB_OFFLINE are
honoured), (b) a local checkpoint (`.pth`, `.pt`, `.safetensors`; a bare state dict or one
under a `model` / `state_dict` key, as in the official Swin release), or (c) a seeded random
initialisation.
"""
from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from .adapters import FamilyAdapter, adapter_for_model, adapter_for_name, supported_families
from .errors import UserError

ALIASES = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "swin_l": "swin_large_patch4_window7_224",
}


@dataclass
class LoadedModel:
    """A model in eval mode, its family adapter and where its weights came from."""

    model: nn.Module
    adapter: FamilyAdapter
    name: str
    """timm name as given (pretrained tag kept), after alias resolution."""
    weights: str
    """Human-readable provenance, e.g. 'random init (seed 0)'."""
    pretrained: bool
    data_config: dict
    """timm's preprocessing: input_size, mean, std, interpolation, crop_pct."""


def resolve_name(name: str) -> str:
    """Alias -> timm name. Raises UserError for unknown names (with close suggestions) and for
    timm models outside every supported family."""
    name = ALIASES.get(name, name)
    base, _tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(base):
        known = list(ALIASES) + timm.list_models()
        close = difflib.get_close_matches(base, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model '{name}'{hint}")
    if adapter_for_name(base) is None:
        raise UserError(f"'{base}' is not a supported model yet; supported families: {supported_families()}")
    return name


def load_model(
    name: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = True,
    seed: int = 0,
    **model_kwargs,
) -> LoadedModel:
    """Build `name` (a timm name, optionally with a pretrained tag, or an alias such as
    'swin_t') and load weights: `checkpoint` if given, else pretrained weights if `pretrained`,
    else random initialisation seeded by `seed`. `model_kwargs` go to `timm.create_model`
    (e.g. `img_size=`, `num_classes=`)."""
    name = resolve_name(name)
    torch.manual_seed(seed)
    if checkpoint is not None:
        state_dict = read_state_dict(checkpoint)
        model = timm.create_model(name, pretrained=False, **model_kwargs)
        adapter = _adapter(model, name)
        _load_into(model, adapter, state_dict, checkpoint)
        weights = f"checkpoint {Path(checkpoint).name} (sha256 {_sha256(checkpoint)[:12]})"
    elif pretrained:
        try:
            model = timm.create_model(name, pretrained=True, **model_kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            first = first.split(". ")[0].rstrip(".")  # first sentence: the Hub's messages run long
            raise UserError(
                f"could not fetch pretrained weights for '{name}' ({first[:200]}); "
                "use --checkpoint PATH for local weights or --no-pretrained for random init"
            ) from err
        adapter = _adapter(model, name)
        tag = getattr(model, "pretrained_cfg", {}).get("tag") or "default"
        weights = f"pretrained ({tag}, via timm / Hugging Face Hub)"
    else:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
        adapter = _adapter(model, name)
        weights = f"random init (seed {seed}): NOT pretrained"
    model.eval()
    data_config = timm.data.resolve_model_data_config(model)
    return LoadedModel(model, adapter, name, weights, checkpoint is None and pretrained, data_config)


def wrap_model(model: nn.Module, name: str | None = None) -> LoadedModel:
    """Wrap an already-built model (Python API) with its adapter."""
    adapter = _adapter(model, name or type(model).__name__)
    model.eval()
    return LoadedModel(model, adapter, name or type(model).__name__, "given in memory", False,
                       timm.data.resolve_model_data_config(model))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors / .pth / .pt, unwrapping `model` / `state_dict`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if not os.access(path, os.R_OK):
        raise UserError(f"checkpoint not readable: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files raise many types (pickle, zip, safetensors, EOF)
        raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err)[:160]}") from err
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no state dict of tensors")
    return state


def _adapter(model: nn.Module, name: str) -> FamilyAdapter:
    adapter = adapter_for_model(model)
    if adapter is None:
        raise UserError(f"'{name}' is not a supported model yet; supported families: {supported_families()}")
    return adapter


def _load_into(model: nn.Module, adapter: FamilyAdapter, state_dict: dict, path) -> None:
    try:
        state_dict = adapter.convert_state_dict(state_dict)
    except Exception as err:
        raise UserError(f"checkpoint {path} does not fit this architecture: {err}") from err
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state_dict[k].shape)} "
                         f"in file, {tuple(own[k].shape)} in model)")
        raise UserError(f"checkpoint {path} is not a {type(model).__name__} of this size: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
