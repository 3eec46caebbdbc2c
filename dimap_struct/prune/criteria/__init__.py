"""Scores, one file each (importing this package registers them all, see `registry`), and the
criterion names that pair a score with a selection policy (`aliases`)."""
from .registry import (SCORES, Calibration, GroupScores, Score, ScoreContext, per_group, register,
                       residual_by_views, unregister)
from . import calibrated, dimap, magnitude, random, taylor  # noqa: F401,E402  (register the built-in scores)
from .aliases import ALIASES, DEFAULT_RULE, Criterion, criterion_names, get_criterion, score  # noqa: E402

__all__ = ["ALIASES", "DEFAULT_RULE", "SCORES", "Calibration", "Criterion", "GroupScores", "Score", "ScoreContext",
           "criterion_names", "get_criterion", "per_group", "register", "residual_by_views", "score", "unregister"]
