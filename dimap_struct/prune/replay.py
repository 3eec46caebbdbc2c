"""Replaying a cut: pruned models rebuilt from the widths a report or a checkpoint records.

`build_architecture` builds the source model and shrinks it to those widths with the same
`cut` that `compress` uses (keeping the first k of every structure); `load_pruned` then loads a
pruned checkpoint's tensors (`models.checkpoint` reads and writes the file): the result is the
exact module that was saved. `load_any` takes whatever `compress` takes: a model name, a pruned
checkpoint, an nn.Module or a `models.LoadedModel`.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

from torch import nn

from ..errors import UserError
from ..files import check_input
from ..models.checkpoint import is_pruned_path, names_a_file, read_spec
from ..models.load import LoadedModel, load_model, wrap_model
from ..untrusted import check_tensors, safetensors_load
from .cut import cut
from .select import Plan


def build_architecture(architecture) -> nn.Module:
    """The module `architecture` (a `report.Architecture` or its dict) describes, with random
    weights (eval mode): the source model cut to its widths, keeping the first k of every
    structure."""
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
    spec = read_spec(path)
    try:
        net = build_architecture(spec["architecture"])
    except UserError:
        raise
    except Exception as err:  # a spec of the right form whose values no builder accepts
        raise UserError(f"pruned checkpoint {path} was not written by dimap-struct, or is damaged (its architecture "
                        f"cannot be built: {type(err).__name__})") from None
    state = safetensors_load(path, "pruned checkpoint")
    check_tensors(state, f"pruned checkpoint {path}", net.state_dict())
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: tensors do not fit the rebuilt architecture ({str(err).splitlines()[0]})") from err
    net.eval()
    return (net, spec) if with_spec else net


def load_any(model: "str | nn.Module | LoadedModel", *, checkpoint=None, pretrained: bool = True, seed: int = 0,
             model_kwargs: dict | None = None) -> LoadedModel:
    """A name goes through `load_model`, a pruned checkpoint (`--save-pt`) through
    `load_pruned`; an nn.Module or LoadedModel is copied (the caller's stays intact)."""
    if isinstance(model, LoadedModel):
        net = copy.deepcopy(model.model)
        return dataclasses.replace(model, model=net, adapter=model.adapter.__class__(net))
    if isinstance(model, nn.Module):
        return wrap_model(copy.deepcopy(model))
    if not isinstance(model, (str, os.PathLike)):
        raise UserError(f"model must be a name, a path or an nn.Module, not {type(model).__name__}")
    if is_pruned_path(model):  # read_spec says why a file is not a pruned checkpoint
        net, saved = load_pruned(model, with_spec=True)
        loaded = wrap_model(net, saved["architecture"]["source_model"])
        return dataclasses.replace(loaded, weights=f"pruned checkpoint {Path(model).name} (from {saved['weights']})",
                                   data_config=saved["data_config"],
                                   model_kwargs=saved["architecture"]["model_kwargs"])
    if names_a_file(model):  # a missing checkpoint is named as a file, not taken for an unknown model name
        check_input(model, "model file")
    return load_model(str(model), checkpoint=checkpoint, pretrained=pretrained, seed=seed, **(model_kwargs or {}))
