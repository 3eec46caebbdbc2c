"""Pruned PyTorch checkpoints that reload without pickled code (`--save-pt`): the file format.

The file is a safetensors file: the pruned model's state dict as tensors, and in its header
metadata (key 'dimap_struct') a JSON spec: the `report.Architecture` (source model name,
constructor options, kept heads / MLP widths / residual widths), the preprocessing and the
weights' provenance. This module writes the file and reads its spec back; rebuilding the
module from the spec replays the cut, which is `prune.replay.load_pruned`'s.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from ..errors import UserError
from ..files import atomic_output, check_input
from ..untrusted import check_shape

SPEC_KEY = "dimap_struct"
FORMAT = 2


def pruned_bytes(model: nn.Module, architecture, data_config: dict, weights: str) -> bytes:
    """The pruned checkpoint of `model` as the bytes of a safetensors file (see the module
    docstring); `architecture` is a `report.Architecture`."""
    spec = {"format": FORMAT, "architecture": dataclasses.asdict(architecture), "data_config": data_config,
            "weights": weights}
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return save(state, metadata={SPEC_KEY: json.dumps(spec)})


def save_pruned(model: nn.Module, architecture, data_config: dict, weights: str, path: str | os.PathLike, *,
                force: bool = True) -> None:
    """Write `model`'s tensors and its spec to `path` (atomically; an existing file is replaced
    only with `force`)."""
    payload = pruned_bytes(model, architecture, data_config, weights)
    with atomic_output(Path(path), force) as tmp:
        # bytes written by Python, so a full disk raises OSError (files.staged names the output)
        tmp.write_bytes(payload)


SPEC_SHAPE = {"format": int, "weights": str,
              "architecture": {"source_model": str, "model_kwargs": dict, "heads": ([int], type(None)),
                               "mlp_widths": ([int], type(None)), "residual_widths": ([int], type(None))},
              "data_config": {"input_size": [int], "mean": [(int, float)], "std": [(int, float)]}}
"""What `pruned_bytes` writes; a file whose spec differs is refused before anything is built."""
SUFFIXES = (".pt", ".safetensors")


def read_spec(path: str | os.PathLike) -> dict:
    """The spec stored in a pruned checkpoint; UserError (one line) if `path` is not one: not
    a regular file, not safetensors, a state dict without our spec, another format version, or
    a spec of the wrong form."""
    path = check_input(path, "pruned checkpoint")
    hint = "a plain state dict goes in --checkpoint, beside the MODEL name it fits"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for foreign files
        raise UserError(f"{path} is not a pruned checkpoint (safetensors written by --save-pt): "
                        f"{str(err).splitlines()[0][:100] if str(err) else type(err).__name__}; {hint}") from None
    if SPEC_KEY not in meta:
        raise UserError(f"{path} is not a pruned checkpoint (no dimap_struct spec); {hint}")
    try:
        spec = json.loads(meta[SPEC_KEY])
    except ValueError:
        spec = None
    where = f"pruned checkpoint {path}"
    check_shape(spec, {"format": int}, where)
    if spec["format"] != FORMAT:
        raise UserError(f"{path} is pruned-checkpoint format {spec['format']}; this version reads format {FORMAT}: "
                        "prune the model again")
    check_shape(spec, SPEC_SHAPE, where)
    return spec


def is_pruned_path(path) -> bool:
    """Whether a model argument names a file meant as a pruned checkpoint (an existing path
    with a checkpoint suffix): such a file is read with `read_spec`, whose errors say what is
    wrong, rather than taken for an unknown model name."""
    return names_a_file(path) and os.path.lexists(path)


def names_a_file(path) -> bool:
    """Whether a model argument ends with a checkpoint suffix, which no model name does."""
    return str(path).lower().endswith(SUFFIXES + (".pth", ".bin"))
