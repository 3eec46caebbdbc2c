"""The budget: a fraction of the original MACs (0 < R <= 1) or an absolute count,
and the fraction of prunable weights kept by weight granularity."""
from __future__ import annotations

import math
import re

from ..errors import UserError

_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_ABSOLUTE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGT])\s*(?:MACs?)?\s*$", re.IGNORECASE)


def target_macs(flops: float | str, original_macs: int) -> int:
    """MACs to keep. `flops` is a fraction R in (0, 1] (float or text like '0.5') or an absolute
    budget with a unit, e.g. '7.3G' (K, M, G, T; an optional 'MACs' suffix). The paper's
    "FLOPs" are multiply-accumulates, so '7.3G' means 7.3e9 MACs."""
    text = str(flops).strip()
    match = _ABSOLUTE.match(text)
    if match:
        macs = float(match.group(1)) * _UNITS[match.group(2).upper()]
        if not 0 < macs <= original_macs:
            raise UserError(f"--flops {text!r}: the budget must be above 0 and at most the model's "
                            f"{original_macs / 1e9:.2f}G MACs")
        return int(round(macs))
    try:
        ratio = float(text)
    except ValueError:
        raise UserError(f"--flops {text!r}: expected a fraction 0 < R <= 1 (e.g. 0.5) or MACs such as 7.3G") from None
    if math.isnan(ratio) or not 0 < ratio <= 1:
        raise UserError(f"--flops {text!r}: the fraction of MACs to keep must satisfy 0 < R <= 1")
    return int(round(ratio * original_macs))


def check_fraction(flops: float | str) -> None:
    """Validate `flops` before any heavy work (the absolute form is checked against the model later)."""
    if _ABSOLUTE.match(str(flops).strip()):
        return
    target_macs(flops, 1)


def check_weight_fraction(value) -> None:
    """--params must be a plain fraction 0 < R <= 1 (no absolute form)."""
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--params {value!r}: expected a fraction 0 < R <= 1") from None
    if math.isnan(r) or not 0 < r <= 1:
        raise UserError(f"--params {value!r}: the fraction of prunable weights to keep must satisfy 0 < R <= 1")
