"""`refit-error`, the score of `dimap-calib`: DIMAP's squared bound measured on layer outputs over
calibration images, with the least-squares refit that follows the cut taken into account
(docs/method.md section 4).

The data-free `dimap-bound-sq` ranks a group by the energy fraction of its weights per MAC: the
relative distortion of a layer's *weights*. With calibration images the distortion that matters
can be measured where it lands, on the output of the layer that reads the group (`proj` for a
head, `fc2` for an MLP channel), and after the refit of `recover.oneshot` has compensated it
with the kept inputs.

For one layer with unpruned A = [W b] and input Gram matrix G (both from
`prune.calibration.collect_stats`), the refit error of removing a set of input groups is the
optimal-brain-surgeon quantity: with H^-1 the inverse of the damped G restricted to the inputs
still kept and A the weights already compensated, removing group S next adds
tr(A_S (H^-1_SS)^-1 A_S^T) / tokens. Groups are removed greedily, cheapest first, each removal
updating A and H^-1. A group's score is the error its removal added, relative to the layer's
unpruned output energy tr(A G A^T) / tokens, made non-decreasing along the greedy order (so a
score threshold removes a greedy prefix). Under the one-module-per-mac policy (`dimap-calib`),
divided by the MACs one such group costs, it removes over all layers the groups that add the
least relative squared output distortion per MAC saved.

No library computes this: torch-pruning's Hessian importance is per weight and data-driven
through gradients; this reuses the Gram matrices recovery collects anyway.
"""
from __future__ import annotations

import math

import torch

from ..calibration import RIDGE, LayerStats, calibration_error
from .registry import GroupScores, Score, ScoreContext, register

MAX_STEPS = 128
"""At most this many greedy steps per layer: wide layers remove several of their cheapest groups
per step (every step re-scores), which bounds the cost for swin_b's 4096-wide MLPs."""


def greedy_removal(stats: LayerStats, group_size: int, ridge: float = RIDGE) -> tuple[list[int], torch.Tensor, float]:
    """Remove a layer's input groups greedily, cheapest refit error first; return (the removal
    order, the error each group added when it went (float64, per token), the unpruned output
    energy per token).

    The layer's F inputs form consecutive groups of `group_size` columns; the constant input
    (bias) is never removed. While one group goes per step (layers of at most MAX_STEPS
    groups), the errors of a prefix of the order add up to the refit error of removing that
    prefix, damped by `ridge` x the mean diagonal of G; a wider layer removes its cheapest few
    per step and records each one's error as if it went alone.
    """
    features = stats.weight.shape[1]
    if features % group_size:
        raise ValueError(f"{features} inputs do not split into groups of {group_size}")
    groups = features // group_size
    a = torch.cat([stats.weight, stats.bias[:, None]], 1)
    gram = stats.gram
    tokens = max(stats.tokens, 1)
    energy = calibration_error(torch.zeros_like(a), a, gram, stats.tokens)  # the output's own energy
    damp = ridge * float(torch.diagonal(gram).mean())
    inverse = torch.linalg.inv(gram + damp * torch.eye(len(gram), dtype=gram.dtype))
    idx = torch.arange(features).reshape(groups, group_size)  # group g's columns
    alive = torch.ones(groups, dtype=torch.bool)
    added = torch.zeros(groups, dtype=gram.dtype)
    order: list[int] = []
    per_step = max(1, math.ceil(groups / MAX_STEPS))
    while len(order) < groups:
        a_s = a[:, :features].reshape(-1, groups, group_size)  # views, no copies
        blocks = inverse[:features, :features].reshape(groups, group_size, groups, group_size)
        blocks = blocks.diagonal(dim1=0, dim2=2).permute(2, 0, 1).clone()  # (groups, group_size, group_size)
        blocks[~alive] = torch.eye(group_size, dtype=gram.dtype)  # removed groups: zero rows, keep it invertible
        costs = (torch.einsum("ong,ngh->onh", a_s, torch.linalg.inv(blocks)) * a_s).sum((0, 2)) / tokens
        costs[~alive] = math.inf
        take = torch.argsort(costs, stable=True)[:min(per_step, int(alive.sum()))]
        cols = idx[take].reshape(-1)
        removed_rows = inverse.index_select(0, cols)  # (s, F + 1)
        block_inv = torch.linalg.inv(removed_rows.index_select(1, cols))
        # compensate the kept inputs for the removed ones, then take the removed ones out of the
        # inverse: this rank-|cols| downdate leaves H^-1 restricted to the kept inputs (a Schur
        # complement), and zero rows and columns for the removed ones
        step = block_inv @ removed_rows
        a.addmm_(a.index_select(1, cols), step, alpha=-1.0)
        inverse.addmm_(removed_rows.T, step, alpha=-1.0)
        a.index_fill_(1, cols, 0.0)
        inverse.index_fill_(0, cols, 0.0).index_fill_(1, cols, 0.0)
        alive[take] = False
        added[take] = costs[take]
        order.extend(take.tolist())
    return order, added, energy


def greedy_refit_costs(stats: LayerStats, group_size: int, ridge: float = RIDGE) -> torch.Tensor:
    """One score per input group (shape (F / group_size,)): the refit error its greedy removal
    added (`greedy_removal`), relative to the unpruned output energy, made non-decreasing along
    the removal order."""
    order, added, energy = greedy_removal(stats, group_size, ridge)
    relative = added / max(energy, 1e-300)
    out = torch.empty_like(relative)
    out[order] = torch.cummax(relative[order], 0).values
    return out


def in_float32(stats: LayerStats) -> LayerStats:
    """The greedy in float32: it only ranks, and at half the memory traffic swin_t's 3072-wide
    MLPs take seconds (tests/test_calibrated_criterion.py checks it picks what float64 picks)."""
    return LayerStats(stats.gram.float(), stats.tokens, stats.weight.float(), stats.bias.float())


def calibrated_scores(blocks, context: ScoreContext) -> GroupScores:
    """Needs `context.stats` (calibration statistics of the unpruned model, keyed like
    `prune.calibration.measured_layers`)."""
    if context.stats is None:
        raise ValueError("refit-error needs calibration statistics (stats=...)")
    heads, mlp = [], []
    for b in blocks:
        proj, fc2 = (in_float32(context.stats[f"{b.name}.{layer}"]) for layer in ("proj", "fc2"))
        heads.append(greedy_refit_costs(proj, b.attn.head_dim).double())
        mlp.append(greedy_refit_costs(fc2, 1).double())
    return GroupScores(heads=heads, mlp=mlp)


register(Score("refit-error", calibrated_scores,
               "DIMAP's squared bound on layer outputs over calibration images, after the refit "
               "(greedy brain-surgeon cost; data-driven: --calib-data)", needs_stats=True))
