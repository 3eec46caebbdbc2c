"""Scores, one file each (importing this package registers them all, see `registry`), and the
criterion names that pair a score with a selection policy (`aliases`)."""
import warnings

from .registry import (SCORES, Calibration, GroupScores, Score, ScoreContext, per_group, register,
                       residual_by_views, unregister)
from . import calibrated, dimap, magnitude, random, taylor  # noqa: F401,E402  (register the built-in scores)
from .aliases import (ALIASES, DEFAULT_RULE, LATENCY_POLICY, Criterion, criterion_names, get_criterion,  # noqa: E402
                      score)

__all__ = ["ALIASES", "DEFAULT_RULE", "LATENCY_POLICY", "SCORES", "Calibration", "Criterion", "GroupScores", "Score",
           "ScoreContext", "criterion_names", "get_criterion", "per_group", "register", "residual_by_views", "score", "unregister"]


def __getattr__(name: str):
    """`CRITERIA`, the registry of criterion names before a criterion became a score and a
    policy: still readable, with a DeprecationWarning (timm's way with renamed names)."""
    if name == "CRITERIA":
        warnings.warn("dimap_struct.prune.criteria.CRITERIA is deprecated: use ALIASES and get_criterion(name)",
                      DeprecationWarning, stacklevel=2)
        return {alias: get_criterion(alias) for alias in ALIASES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
