"""Reading files a user hands over, in one place: checkpoints, resume states, pruned `.pt`,
`hf:` weights, caches and metadata all pass the same checks before anything uses them.

- `torch_load`: a PyTorch file through torch's weights-only unpickler, never the full one (a
  crafted pickle would run its code), with one-line errors for empty, truncated and foreign
  files and for files that hold pickled Python objects;
- `check_tensors`: every tensor finite, and floating point wherever the model's own tensor is;
- `check_shape`: metadata (JSON read from a file) against the shape this package writes, so
  a file of another program, or a damaged one, is a UserError, never a TypeError later.
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Mapping

import torch
from safetensors.torch import load_file

from .errors import UserError
from .files import check_input


def torch_load(path: str | os.PathLike, what: str = "checkpoint", allowed: tuple = ()) -> Any:
    """`torch.load(path, weights_only=True)` with `allowed` extra classes, or UserError (one
    line naming `path`). Library warnings (e.g. about the pickle protocol) are not shown."""
    path = check_input(path, what)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "GLOBAL" in text or "Unsupported global" in text:  # the safe unpickler met a class or function
            raise UserError(f"{what} {path} holds pickled Python objects, not only tensors; loading them would "
                            "run code: save model.state_dict() with torch.save or safetensors instead") from None
        if "Unsupported operand" in text:
            raise UserError(f"cannot read {what} {path}: damaged, or written by pickle rather than torch.save "
                            "(torch's safe loader reads only torch.save files and safetensors)") from None
        raise UserError(f"cannot read {what} {path}: not a PyTorch or safetensors file") from None
    except Exception as err:  # corrupt files raise many types (zip, EOF, RuntimeError from the reader)
        raise UserError(f"cannot read {what} {path}: {_first_line(err)} (truncated or not a PyTorch file?)") from None


def safetensors_load(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """A safetensors file as a dict of tensors, or UserError (one line naming `path`)."""
    path = check_input(path, what)
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own types for damaged headers and short files
        raise UserError(f"cannot read {what} {path}: {_first_line(err)} (truncated or not safetensors?)") from None


def check_tensors(state: Mapping, where: str, reference: Mapping | None = None) -> None:
    """UserError unless every tensor of `state` is finite and, where `reference` (the model's
    own state dict) holds a floating-point tensor of that name, floating point too: integer
    weights would be cast silently and give a useless model."""
    if reference is not None:
        for key, own in reference.items():
            theirs = state.get(key)
            if isinstance(theirs, torch.Tensor) and own.is_floating_point() and not theirs.is_floating_point():
                raise UserError(f"{where}: tensor {key} is {str(theirs.dtype).replace('torch.', '')}, not floating "
                                "point; weights must be float")
    bad = [(k, int((~torch.isfinite(v)).sum())) for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        names = ", ".join(f"{k} ({n} value{'s' if n > 1 else ''})" for k, n in bad[:3])
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise UserError(f"{where} has non-finite weights (inf or NaN) in {names}{more}")


def check_shape(value: Any, shape: Any, where: str, path: str = "") -> None:
    """UserError ("not written by dimap-struct, or damaged") unless `value` fits `shape`: a type
    for a leaf, a dict of key -> shape for a mapping whose keys must all be present, a one-item
    list [shape] for a list of such items, or a tuple of shapes, any of which may fit."""
    wrong = _misfit(value, shape, path)
    if wrong is not None:
        raise UserError(f"{where} was not written by dimap-struct, or is damaged ({wrong or 'top level'} has the "
                        "wrong form)")


def _misfit(value: Any, shape: Any, path: str) -> str | None:
    """Where `value` first differs from `shape` (a dotted path), or None if it fits."""
    if isinstance(shape, tuple):
        misses = [_misfit(value, option, path) for option in shape]
        return None if None in misses else misses[0]
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return path
        for key, inner in shape.items():
            miss = _misfit(value[key], inner, f"{path}.{key}".lstrip(".")) if key in value else f"{path}.{key}"
            if miss is not None:
                return miss.lstrip(".")
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return path
        return next((m for i, item in enumerate(value) if (m := _misfit(item, shape[0], f"{path}[{i}]"))), None)
    fits = isinstance(value, shape) and not (isinstance(value, bool) and shape is not bool)
    return None if fits else path


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__

