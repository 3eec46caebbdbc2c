"""The budget: a fraction of the original MACs (0 < R <= 1) or an absolute count,
and the fraction of prunable weights kept by weight granularity.

Text is parsed once, into a `Budget` (`options.PruneOptions.budget`); code that computes a
budget (the rounds of `--steps`) makes one from the number with `Budget.absolute`."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import UserError

_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_ABSOLUTE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGT])\s*(?:MACs?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """What a run keeps: `fraction` of the original (of its MACs, or with `weights` of its
    prunable weights) or, for MACs only, the absolute count `macs`; exactly one is set. `text`
    is the budget as the user wrote it (the report's target), only shown, never parsed again."""

    text: str
    fraction: float | None = None
    macs: float | None = None
    weights: bool = False

    @classmethod
    def parse(cls, flops: float | str) -> "Budget":
        """A MACs budget from --flops: a fraction R in (0, 1] (float or text like '0.5') or a
        count with a unit, e.g. '7.3G' (K, M, G, T; an optional 'MACs' suffix). The paper's
        "FLOPs" are multiply-accumulates, so '7.3G' means 7.3e9 MACs. A count is checked
        against the model later (`target_macs`)."""
        text = str(flops).strip()
        match = _ABSOLUTE.match(text)
        if match:
            return cls(str(flops), macs=float(match.group(1)) * _UNITS[match.group(2).upper()])
        try:
            ratio = float(text)
        except ValueError:
            raise UserError(f"--flops {text!r}: expected a fraction 0 < R <= 1 (e.g. 0.5) or MACs such as "
                            "7.3G") from None
        if math.isnan(ratio) or not 0 < ratio <= 1:
            raise UserError(f"--flops {text!r}: the fraction of MACs to keep must satisfy 0 < R <= 1")
        return cls(str(flops), fraction=ratio)

    @classmethod
    def parse_weights(cls, params) -> "Budget":
        """A weight budget from --params: a plain fraction 0 < R <= 1 (no absolute form)."""
        try:
            ratio = float(params)
        except (TypeError, ValueError):
            raise UserError(f"--params {params!r}: expected a fraction 0 < R <= 1") from None
        if math.isnan(ratio) or not 0 < ratio <= 1:
            raise UserError(f"--params {params!r}: the fraction of prunable weights to keep must satisfy 0 < R <= 1")
        return cls(str(params), fraction=ratio, weights=True)

    @classmethod
    def absolute(cls, macs: int) -> "Budget":
        """A computed MACs count; its text (in G, 12 significant digits) parses back to it."""
        return cls(f"{macs / 1e9:.12g}G", macs=macs)

    def target_macs(self, original_macs: int) -> int:
        """MACs to keep of a model with `original_macs`; UserError for a count outside (0, original]."""
        if self.weights:
            raise ValueError("a --params budget counts weights, not MACs")
        if self.macs is None:
            return int(round(self.fraction * original_macs))
        if not 0 < self.macs <= original_macs:
            raise UserError(f"--flops {self.text.strip()!r}: the budget must be above 0 and at most the model's "
                            f"{original_macs / 1e9:.2f}G MACs")
        return int(round(self.macs))

