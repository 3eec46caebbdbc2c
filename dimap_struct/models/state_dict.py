"""A user's checkpoint file, read into a plain state dict and loaded into a model, or one clear
line saying why not.

Understood layouts (what timm's training script, DeiT, the official Swin release, DDP and
`torch.compile` write):
- a bare state dict, or one under `model` / `state_dict` (preferred) or the EMA copies
  `model_ema` / `state_dict_ema` / `ema` (used when the file holds no plain weights);
- keys prefixed `module.` (DistributedDataParallel) or `_orig_mod.` (torch.compile).

Refused, naming what is wrong: a pickled module or other Python objects (loading pickled code
is unsafe), non-finite weights, and a checkpoint of another architecture, described by the
family adapter (`FamilyAdapter.describe_state_dict`: depths and width) next to the model's.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..files import check_input
from ..untrusted import check_tensors, safetensors_load, torch_load

PLAIN_KEYS = ("model", "state_dict")
EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    """Tensors read from a file, and where in the file they were."""

    state_dict: dict[str, torch.Tensor]
    key: str | None
    """The container key the weights came from (None: the file is a bare state dict)."""


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read `path` (.safetensors, or .pth / .pt through `torch.load(weights_only=True)`) into a
    Checkpoint, or raise UserError."""
    path = check_input(path, "checkpoint")
    raw = _load(path)
    state, key = _unwrap(raw)
    if state is None:
        found = ", ".join(repr(k) for k in list(raw)[:8]) if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"checkpoint {path} holds no state dict of tensors (found: {found})")
    state = _strip_prefixes(state)
    check_tensors(state, f"checkpoint {path}")
    return Checkpoint(state, key)


def _load(path: Path):
    if path.suffix == ".safetensors":
        return safetensors_load(path)
    # timm's and DeiT's training scripts store their argparse.Namespace beside the weights
    return torch_load(path, "checkpoint", allowed=(argparse.Namespace,))


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _unwrap(raw) -> tuple[dict | None, str | None]:
    if _is_state_dict(raw):
        return raw, None
    if not isinstance(raw, dict):
        return None, None
    for key in PLAIN_KEYS + EMA_KEYS:
        value = raw.get(key)
        if isinstance(value, dict) and "state_dict" in value and not _is_state_dict(value):
            value = value["state_dict"]  # e.g. an EMA helper's own state: {'state_dict': ..., 'decay': ...}
        if _is_state_dict(value):
            return value, key
    return None, None


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    stripped = True
    while stripped:  # e.g. torch.compile over DDP: '_orig_mod.module.'
        stripped = False
        for prefix in PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def load_into(model: nn.Module, adapter, checkpoint: Checkpoint, path, name: str) -> None:
    """Load `checkpoint` into `model` (strict), converting the family's other published layouts
    first; UserError if it does not fit, explained in terms of the architecture."""
    state = checkpoint.state_dict
    try:
        state = adapter.convert_state_dict(state)
    except Exception as err:
        raise _mismatch(path, name, adapter, checkpoint.state_dict, model, f"{type(err).__name__}: {err}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} in file, "
                         f"{tuple(own[k].shape)} in model)")
        raise _mismatch(path, name, adapter, checkpoint.state_dict, model, "; ".join(parts))

    check_tensors(state, f"checkpoint {path}", own)
    model.load_state_dict(state, strict=True)


def _mismatch(path, name: str, adapter, state: dict, model: nn.Module, detail: str) -> UserError:
    theirs = adapter.describe_state_dict(state)
    ours = adapter.describe_state_dict(model.state_dict())
    if theirs and ours and theirs != ours:
        return UserError(f"checkpoint {path} is for a model with {theirs}, not {name} ({ours})")
    if theirs is None and ours:
        return UserError(f"checkpoint {path} does not look like a {adapter.family} model ({name}: {ours}); "
                         f"{detail.splitlines()[0][:160]}")
    return UserError(f"checkpoint {path} does not fit {name}: {detail.splitlines()[0][:200]}")
