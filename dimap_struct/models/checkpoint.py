"""Pruned PyTorch checkpoints that reload without pickled code (`--save-pt`, `load_pruned`).

The file is a safetensors file: the pruned model's state dict as tensors, and in its header
metadata (key 'dimap_struct') a JSON spec: the `report.Architecture` (source model name,
constructor options, kept heads / MLP widths / residual widths), the preprocessing and the
weights' provenance. `build_architecture` builds the source model and shrinks it to those
widths with the same `prune.cut.cut` that `compress` uses (keeping the first k of everything);
`load_pruned` then loads the tensors: the result is the exact module that was saved.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from torch import nn

from ..errors import UserError

SPEC_KEY = "dimap_struct"
FORMAT = 2


def save_pruned(model: nn.Module, architecture, data_config: dict, weights: str, path: str | os.PathLike, *,
                force: bool = True) -> None:
    """Write `model`'s tensors and its spec to `path` (atomically; an existing file is replaced
    only with `force`). `architecture` is a `report.Architecture`."""
    from safetensors.torch import save

    from ..files import atomic_output

    path = Path(path)
    spec = {"format": FORMAT, "architecture": dataclasses.asdict(architecture), "data_config": data_config,
            "weights": weights}
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_output(path, force) as tmp:
        # bytes written by Python, so a full disk raises OSError (files.staged names the output)
        tmp.write_bytes(save(state, metadata={SPEC_KEY: json.dumps(spec)}))


def read_spec(path: str | os.PathLike) -> dict:
    """The spec stored in a pruned checkpoint; UserError if `path` is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"pruned checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for foreign files
        raise UserError(f"{path} is not a pruned checkpoint (safetensors with a dimap_struct spec): "
                        f"{str(err).splitlines()[0][:120]}") from err
    if SPEC_KEY not in meta:
        raise UserError(f"{path} has no dimap_struct spec; write it with dimap-compress --save-pt")
    spec = json.loads(meta[SPEC_KEY])
    if spec.get("format") != FORMAT:
        raise UserError(f"{path}: unsupported pruned-checkpoint format {spec.get('format')} (this version reads "
                        f"{FORMAT}); prune the model again")
    return spec


def build_architecture(architecture) -> nn.Module:
    """The module `architecture` (a `report.Architecture` or its dict) describes, with random
    weights (eval mode): the source model cut to its widths, keeping the first k of every
    structure."""
    from ..prune.cut import cut
    from ..prune.select import Plan
    from .load import load_model

    arch = architecture if isinstance(architecture, dict) else dataclasses.asdict(architecture)
    loaded = load_model(arch["source_model"], pretrained=False, **arch.get("model_kwargs", {}))
    if arch["heads"] is not None:
        residual = arch["residual_widths"]
        plan = Plan([b.name for b in loaded.adapter.blocks()], [list(range(h)) for h in arch["heads"]],
                    [list(range(m)) for m in arch["mlp_widths"]],
                    None if residual is None else [list(range(r)) for r in residual])
        cut(loaded.model, loaded.adapter, plan, tuple(loaded.data_config["input_size"]))
    return loaded.model.eval()


def load_pruned(path: str | os.PathLike, *, with_spec: bool = False):
    """Rebuild the pruned module saved at `path` (eval mode). With `with_spec`, return
    (module, spec); the spec's 'data_config' gives the preprocessing."""
    from safetensors.torch import load_file

    spec = read_spec(path)
    net = build_architecture(spec["architecture"])
    state = load_file(str(path))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: tensors do not fit the rebuilt architecture ({str(err).splitlines()[0]})") from err
    net.eval()
    return (net, spec) if with_spec else net


def is_pruned_checkpoint(path) -> bool:
    """A cheap test for CLI dispatch: an existing .pt / .safetensors file with our spec."""
    if not str(path).endswith((".pt", ".safetensors")) or not Path(path).is_file():
        return False
    try:
        read_spec(path)
    except UserError:
        return False
    return True
