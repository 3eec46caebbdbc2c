"""Pruned PyTorch checkpoints that reload without pickled code (`--save-pt`, `load_pruned`).

The file is a safetensors file: the pruned model's state dict as tensors, and in its header
metadata (key 'dimap_struct') a JSON spec of how to rebuild the architecture: the source model
name and constructor options, and the kept heads / MLP widths / residual widths per block and
stage. `load_pruned` builds the source model, shrinks it to those widths with the same surgery
`compress` uses (keeping the first k of everything), and loads the tensors: the result is the
exact module that was saved.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from .errors import UserError

SPEC_KEY = "dimap_struct"
FORMAT = 1


def pruned_spec(source: dict, plan=None) -> dict:
    """The JSON spec of a model pruned by `plan` from `source` (see `pipeline.CompressionResult`);
    without a plan, of the unpruned source architecture."""
    if plan is None:
        return {"format": FORMAT, **source, "heads": None, "mlp_widths": None, "residual_widths": None}
    return {"format": FORMAT, **source, "heads": plan.head_counts, "mlp_widths": plan.mlp_widths,
            "residual_widths": plan.residual_widths}


def save_pruned(model: nn.Module, spec: dict, path: str | os.PathLike) -> None:
    """Write `model`'s tensors and `spec` to `path` (atomically)."""
    from safetensors.torch import save_file

    from .files import atomic_output

    path = Path(path)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_output(path, ".tmp") as tmp:
        save_file(state, str(tmp), metadata={SPEC_KEY: json.dumps(spec)})


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
        raise UserError(f"{path}: unsupported pruned-checkpoint format {spec.get('format')}")
    return spec


def build_architecture(spec: dict) -> nn.Module:
    """The module `spec` describes, with random weights (eval mode): the source model shrunk to
    the spec's widths, keeping the first k of every structure."""
    from .models import load_model
    from .residual import cut_residual
    from .select import Plan
    from .surgery import apply_plan

    loaded = load_model(spec["source_model"], pretrained=False, **spec.get("model_kwargs", {}))
    net, adapter = loaded.model, loaded.adapter
    if spec["heads"] is not None:
        blocks = adapter.blocks()
        plan = Plan([b.name for b in blocks], [list(range(h)) for h in spec["heads"]],
                    [list(range(m)) for m in spec["mlp_widths"]],
                    None if spec["residual_widths"] is None else [list(range(r)) for r in spec["residual_widths"]])
        apply_plan(net, adapter, blocks, plan, tuple(loaded.data_config["input_size"]))
        if plan.residual is not None:
            for site, keep in zip(adapter.residual_sites(), plan.residual):
                cut_residual(adapter, site, keep)
    return net.eval()


def load_pruned(path: str | os.PathLike, *, with_spec: bool = False):
    """Rebuild the pruned module saved at `path` (eval mode). With `with_spec`, return
    (module, spec); the spec's 'data_config' gives the preprocessing."""
    from safetensors.torch import load_file

    spec = read_spec(path)
    net = build_architecture(spec)
    state = load_file(str(path))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: tensors do not fit the rebuilt architecture ({str(err).splitlines()[0]})") from err
    net.eval()
    return (net, spec) if with_spec else net


def is_pruned_checkpoint(path: str) -> bool:
    """A cheap test for CLI dispatch: an existing .pt / .safetensors file with our spec."""
    if not str(path).endswith((".pt", ".safetensors")) or not Path(path).is_file():
        return False
    try:
        read_spec(path)
    except UserError:
        return False
    return True

