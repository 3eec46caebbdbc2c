"""The random baseline: uniform scores drawn from --seed."""
from __future__ import annotations

import torch

from .registry import GroupScores, Score, ScoreContext, register


def random_scores(blocks, context: ScoreContext) -> GroupScores:
    gen = torch.Generator().manual_seed(context.seed)
    return GroupScores(heads=[torch.rand(b.attn.num_heads, generator=gen, dtype=torch.float64) for b in blocks],
                       mlp=[torch.rand(b.mlp.width, generator=gen, dtype=torch.float64) for b in blocks])


def random_residual_scores(sites, context: ScoreContext) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(context.seed + 7919)  # a stream apart from the heads' and channels'
    return [torch.rand(s.width, generator=gen, dtype=torch.float64) for s in sites]


register(Score("random", random_scores, "uniform random scores (seeded by --seed)",
               residual_score=random_residual_scores))
