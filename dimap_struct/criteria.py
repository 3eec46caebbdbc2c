"""Criteria: interchangeable functions from a model's blocks to one score per group.

A criterion returns, for every block, a score per attention head and a score per MLP channel;
higher means more important. Selection compares scores only within a module (heads with heads,
MLP channels with MLP channels), so a criterion must make scores comparable across blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .adapters import BlockSite
from .scoring import channel_weight_views, group_scores, head_weight_views


@dataclass
class GroupScores:
    """Per block: `heads[b]` has shape (num_heads,), `mlp[b]` has shape (mlp_width,)."""

    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]


Criterion = Callable[..., GroupScores]
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str):
    def wrap(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn
    return wrap


@register_criterion("dimap")
def dimap(blocks: list[BlockSite], score_mode: str = "group", **_) -> GroupScores:
    """Module-aware DIMAP: per-layer relative-energy scores, so heads (and channels) of blocks
    with different weight scales are comparable. `score_mode`: see `scoring.group_scores`."""
    return GroupScores(
        heads=[group_scores(head_weight_views(b.attn), score_mode) for b in blocks],
        mlp=[group_scores(channel_weight_views(b.mlp), score_mode) for b in blocks],
    )


def score(criterion: str, blocks: list[BlockSite], **options) -> GroupScores:
    if criterion not in CRITERIA:
        from .errors import UserError

        raise UserError(f"unknown criterion '{criterion}'; choose from: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[criterion](blocks, **options)
