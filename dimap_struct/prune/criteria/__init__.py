"""Criteria, one file each; importing this package registers them all (see `registry`)."""
from .registry import (CRITERIA, Calibration, Criterion, GroupScores, ScoreContext, criterion_names,
                       get_criterion, per_group, register, residual_by_views, score, unregister)
from . import calibrated, dimap, magnitude, random, taylor  # noqa: F401,E402  (register the built-in criteria)

__all__ = ["CRITERIA", "Calibration", "Criterion", "GroupScores", "ScoreContext", "criterion_names",
           "get_criterion", "per_group", "register", "residual_by_views", "score", "unregister"]
