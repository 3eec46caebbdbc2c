"""DIMAP criteria: per-layer relative-energy scores of groups (docs/method.md sections 1-3)."""
from __future__ import annotations

import dataclasses

import torch

from ..costs import residual_channel_macs
from ..residual import channel_views
from ..scoring import energy_fractions, group_scores
from .registry import CRITERIA, Criterion, GroupScores, ScoreContext, per_group, register, residual_by_views


def dimap_scores(blocks, context: ScoreContext) -> GroupScores:
    """Module-aware DIMAP: per-layer relative-energy scores, so heads (and channels) of blocks
    with different weight scales are comparable. `context.score_mode`: `scoring.group_scores`."""
    return per_group(blocks, lambda views: group_scores(views, context.score_mode))


def _option_a(views: list[torch.Tensor]) -> torch.Tensor:
    return group_scores(views, "group")


def _per_mac(base: GroupScores, context: ScoreContext, who: str) -> GroupScores:
    """`base` divided by the MACs one head / one MLP channel of its block costs."""
    if context.costs is None:
        raise ValueError(f"{who} needs the cost model (costs=...)")
    return GroupScores(heads=[s / bc.macs_per_head for s, bc in zip(base.heads, context.costs.blocks)],
                       mlp=[s / bc.macs_per_channel for s, bc in zip(base.mlp, context.costs.blocks)])


def cost_aware_scores(blocks, context: ScoreContext) -> GroupScores:
    """DIMAP score divided by the MACs one group costs."""
    return _per_mac(dimap_scores(blocks, context), context, "dimap-cost")


def _per_residual_mac(view_score):
    """A residual scorer for criteria that score heads and MLP channels per MAC (pooled as one
    module, or, for 'bound-split', ordered per MAC inside each module): `view_score` of a
    channel's views divided by the MACs its stage loses with it, so that all groups are in the
    same units."""
    def scorer(sites, context: ScoreContext):
        per_channel = residual_channel_macs(context.costs)
        return [view_score(channel_views(s)) / max(m, 1) for s, m in zip(sites, per_channel)]
    return scorer


register(Criterion("lamp-global", dimap_scores, "one-module",
                   "DIMAP scores with the whole model as one module (heads compete with channels)",
                   uses_score_mode=True, residual_score=residual_by_views(_option_a)))
# module-aware: residual channels are a module of their own, and those of one stage all cost the
# same, so they keep their plain DIMAP score
register(Criterion("dimap-cost", cost_aware_scores, "module-aware", "DIMAP score divided by the group's MACs",
                   uses_score_mode=True, residual_score=residual_by_views(_option_a)))
register(Criterion("dimap-cost-global", cost_aware_scores, "one-module",
                   "DIMAP score divided by the group's MACs, the whole model one module",
                   uses_score_mode=True, residual_score=_per_residual_mac(_option_a)))
register(Criterion("dimap-paper", dimap_scores, "module-aware",
                   "the paper's rule: heads and MLP channels each lose the same fraction of their weights",
                   uses_score_mode=True, residual_score=residual_by_views(_option_a)))


def bound_scores(blocks, context: ScoreContext) -> GroupScores:
    """Energy fraction of each group in its block's layers (`scoring.energy_fractions`)."""
    return per_group(blocks, energy_fractions)


def bound_squared_scores(blocks, context: ScoreContext) -> GroupScores:
    """Energy fraction per MAC: ranking by it minimises the sum of squared relative distortions
    per MAC saved (the additive form of DIMAP's bound)."""
    return _per_mac(bound_scores(blocks, context), context, "dimap-bound-sq")


register(Criterion("dimap-bound", bound_scores, "distortion",
                   "DIMAP's bound: greedy on the sum of relative Frobenius distortions added per MAC saved",
                   residual_score=residual_by_views(energy_fractions)))
register(Criterion("dimap-bound-sq", bound_squared_scores, "one-module",
                   "DIMAP's bound squared: groups ranked by energy fraction per MAC, the whole model one module",
                   residual_score=_per_residual_mac(energy_fractions)))


def split_scores(blocks, context: ScoreContext) -> GroupScores:
    """DIMAP score per MAC orders each module's removals; the energy fractions (the squared
    bound's terms) decide how much each module removes (policy 'bound-split')."""
    return dataclasses.replace(cost_aware_scores(blocks, context), distortion=bound_scores(blocks, context))


register(Criterion("dimap-split", split_scores, "bound-split",
                   "DIMAP score per MAC inside each module; the heads / MLP split of the MACs that minimises "
                   "DIMAP's squared bound", uses_score_mode=True, residual_score=_per_residual_mac(_option_a),
                   residual_distortion=residual_by_views(energy_fractions)))


DEFAULT_RULE = "dimap-cost-global"
"""The rule the default criterion `dimap` stands for (its scores and its selection policy), and the
one place that says so: the winner of the measurement whose decision rule docs/method.md section 4
states, as `python -m benchmarks.decide` wrote it to benchmarks/results/decision.json ("winner").
tests/test_default_decision.py fails while the two differ."""
register(dataclasses.replace(CRITERIA[DEFAULT_RULE], name="dimap",
                             summary=f"the default: {DEFAULT_RULE} ({CRITERIA[DEFAULT_RULE].summary})"))
