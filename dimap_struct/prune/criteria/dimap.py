"""DIMAP's scores: per-layer relative energy (`lamp`) and the energy fraction of DIMAP's bound
(`energy-fraction`), from a group's weights (docs/method.md sections 1-4)."""
from __future__ import annotations

import torch

from ..scoring import energy_fractions, group_scores
from .registry import GroupScores, Score, ScoreContext, per_group, register, residual_by_views


def lamp_scores(blocks, context: ScoreContext) -> GroupScores:
    """DIMAP's group score, per-layer relative energy (LAMP's formula), so heads (and channels) of
    blocks with different weight scales are comparable. `context.score_mode`: `scoring.group_scores`."""
    return per_group(blocks, lambda views: group_scores(views, context.score_mode))


def _option_a(views: list[torch.Tensor]) -> torch.Tensor:
    return group_scores(views, "group")


register(Score("lamp", lamp_scores,
               "DIMAP's group score, the per-layer relative energy (LAMP's formula; --score option A or B)",
               uses_score_mode=True, residual_score=residual_by_views(_option_a)))


def bound_scores(blocks, context: ScoreContext) -> GroupScores:
    """Energy fraction of each group in its block's layers (`scoring.energy_fractions`): its term
    of DIMAP's squared bound."""
    return per_group(blocks, energy_fractions)


register(Score("energy-fraction", bound_scores,
               "the group's share of its block's weight energy, its term of DIMAP's squared distortion bound",
               residual_score=residual_by_views(energy_fractions)))
