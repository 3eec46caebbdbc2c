"""Criteria: interchangeable functions from a model's blocks to one score per group.

A criterion returns, for every block, a score per attention head and a score per MLP channel;
higher means more important. Each criterion also names the selection policy it is meant for
(see `select.POLICIES`): `module-aware` ranks heads against heads and channels against
channels across all blocks (one threshold per module), `uniform` prunes every block by the
same ratio (ranking only inside a block), `one-module` ranks heads and channels together.

Every criterion gets the same keyword options (`score_mode`, `seed`, `costs`); data-driven
ones read gradients that `taylor.accumulate_gradients` left in `.grad`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .adapters import BlockSite
from .errors import UserError
from .scoring import channel_weight_views, group_scores, head_weight_views


@dataclass
class GroupScores:
    """Per block: `heads[b]` has shape (num_heads,), `mlp[b]` has shape (mlp_width,)."""

    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: Callable[..., GroupScores]
    policy: str
    """Selection policy: 'module-aware', 'uniform' or 'one-module' (see `select`)."""
    summary: str
    needs_data: bool = False
    view_score: Callable[[list[torch.Tensor]], torch.Tensor] | None = None
    """Score of groups from the per-layer (groups, n) views of their weights, for criteria
    that are such a function: it scores any other kind of group too (residual channels)."""


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, policy: str, summary: str, needs_data: bool = False,
                       view_score: Callable[[list[torch.Tensor]], torch.Tensor] | None = None):
    def wrap(fn: Callable[..., GroupScores]) -> Callable[..., GroupScores]:
        CRITERIA[name] = Criterion(name, fn, policy, summary, needs_data, view_score)
        return fn
    return wrap


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise UserError(f"unknown criterion '{name}'; choose from: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def score(criterion: str, blocks: list[BlockSite], **options) -> GroupScores:
    """Scores of `criterion` for `blocks`; options: score_mode, seed, costs (a CostModel)."""
    return get_criterion(criterion).fn(blocks, **options)


def _per_group(blocks: list[BlockSite], reduce: Callable[[list[torch.Tensor]], torch.Tensor],
               weights: Callable[[torch.Tensor], torch.Tensor] = lambda w: w) -> GroupScores:
    """Apply `reduce` to the per-layer (groups, n) views of every block's heads and channels,
    after mapping each view through `weights` (e.g. to w * grad)."""
    return GroupScores(
        heads=[reduce([weights(v) for v in head_weight_views(b.attn)]) for b in blocks],
        mlp=[reduce([weights(v) for v in channel_weight_views(b.mlp)]) for b in blocks],
    )


def _lp_norm(p: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    def reduce(views: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([v.to(torch.float64) for v in views], 1).norm(p=p, dim=1)
    return reduce


def _dimap_group(views: list[torch.Tensor]) -> torch.Tensor:
    return group_scores(views, "group")


@register_criterion("dimap", "module-aware",
                    "DIMAP group scores (per-layer relative energy), heads vs heads, channels vs channels",
                    view_score=_dimap_group)
def dimap(blocks: list[BlockSite], score_mode: str = "group", **_) -> GroupScores:
    """Module-aware DIMAP: per-layer relative-energy scores, so heads (and channels) of blocks
    with different weight scales are comparable. `score_mode`: see `scoring.group_scores`."""
    return _per_group(blocks, lambda views: group_scores(views, score_mode))


@register_criterion("l1", "uniform", "group L1 norm, every block pruned by the same ratio", view_score=_lp_norm(1))
def l1(blocks: list[BlockSite], **_) -> GroupScores:
    return _per_group(blocks, _lp_norm(1))


@register_criterion("l2", "uniform", "group L2 norm, every block pruned by the same ratio", view_score=_lp_norm(2))
def l2(blocks: list[BlockSite], **_) -> GroupScores:
    return _per_group(blocks, _lp_norm(2))


@register_criterion("magnitude-global", "module-aware", "group L2 norm ranked across all blocks of a module",
                    view_score=_lp_norm(2))
def magnitude_global(blocks: list[BlockSite], **_) -> GroupScores:
    return _per_group(blocks, _lp_norm(2))


@register_criterion("lamp-global", "one-module",
                    "DIMAP scores with the whole model as one module (heads compete with channels)",
                    view_score=_dimap_group)
def lamp_global(blocks: list[BlockSite], score_mode: str = "group", **_) -> GroupScores:
    return dimap(blocks, score_mode=score_mode)


@register_criterion("random", "module-aware", "uniform random scores (seeded by --seed)")
def random(blocks: list[BlockSite], seed: int = 0, **_) -> GroupScores:
    gen = torch.Generator().manual_seed(seed)
    return GroupScores(
        heads=[torch.rand(b.attn.num_heads, generator=gen, dtype=torch.float64) for b in blocks],
        mlp=[torch.rand(b.mlp.width, generator=gen, dtype=torch.float64) for b in blocks],
    )


# residual channels of one stage all cost the same, so they keep their plain DIMAP score
@register_criterion("dimap-cost", "module-aware", "DIMAP score divided by the group's MACs", view_score=_dimap_group)
def dimap_cost(blocks: list[BlockSite], score_mode: str = "group", costs=None, **_) -> GroupScores:
    if costs is None:
        raise ValueError("dimap-cost needs the cost model (costs=...)")
    base = dimap(blocks, score_mode=score_mode)
    return GroupScores(
        heads=[s / bc.macs_per_head for s, bc in zip(base.heads, costs.blocks)],
        mlp=[s / bc.macs_per_channel for s, bc in zip(base.mlp, costs.blocks)],
    )


@register_criterion("taylor", "module-aware",
                    "first-order Taylor |w * dL/dw| summed per group (data-driven: --calib-data)", needs_data=True)
def taylor(blocks: list[BlockSite], **_) -> GroupScores:
    """Needs gradients of the calibration loss in `.grad` of qkv/proj/fc1/fc2 weights."""
    for b in blocks:
        for layer in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2):
            if layer.weight.grad is None:
                raise ValueError("taylor needs gradients: run taylor.accumulate_gradients first")
    def saliency(views: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
        return sum((v.to(torch.float64) * g.to(torch.float64)).abs().sum(1) for v, g in zip(views, grads))

    return GroupScores(
        heads=[saliency(head_weight_views(b.attn), head_weight_views(b.attn, grad=True)) for b in blocks],
        mlp=[saliency(channel_weight_views(b.mlp), channel_weight_views(b.mlp, grad=True)) for b in blocks],
    )
