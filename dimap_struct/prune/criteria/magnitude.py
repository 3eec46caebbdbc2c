"""Magnitude criteria: the L1 / L2 norm of a group's weights (docs/method.md section 3)."""
from __future__ import annotations

from typing import Callable

import torch

from .registry import Score, per_group, register, residual_by_views


def lp_norm(p: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """Norm of each group's weights over all the layers it owns, from (groups, n) views."""
    def reduce(views: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([v.to(torch.float64) for v in views], 1).norm(p=p, dim=1)
    return reduce


for _p in (1, 2):
    register(Score(f"l{_p}", lambda blocks, context, _r=lp_norm(_p): per_group(blocks, _r),
                   f"group L{_p} norm of its weights", residual_score=residual_by_views(lp_norm(_p))))
