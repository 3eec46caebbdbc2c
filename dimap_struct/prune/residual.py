"""Residual (embedding) channels, `--prune-embed`: each channel's weight views, and the
selection inputs for a criterion (docs/method.md section 2; the adapter declares each
`ResidualSite`, `prune.cut.cut_residual` removes channels, `prune.verify.mask_residual`
zeroes them).

Each score rates residual channels with its own `residual_score` (DIMAP, L1 / L2: the same
view score as for heads and channels, over a channel's slice of every layer it touches; random:
seeded draws). LayerNorm affine entries are AUX-M (never scored, removed with their channel).
Residual channels form their own module: they compete across all stages, and with heads and
MLP channels only under a policy that pools the modules.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..models.adapters import FamilyAdapter, ResidualSite


def _rows(module: nn.Module, width: int) -> torch.Tensor:
    """(width, n) view of what each channel owns in a producer (output rows / conv filters)."""
    return module.weight.detach().reshape(width, -1)


def _columns(module: nn.Linear, width: int, groups: int = 1) -> torch.Tensor:
    """(width, n) view of the input columns of each channel (groups interleaved copies)."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], groups, width).permute(2, 0, 1).reshape(width, -1)


def channel_views(site: ResidualSite) -> list[torch.Tensor]:
    """Per-layer (channels, n) views of the weights each residual channel of `site` owns."""
    views = [_rows(p, site.width) for p in site.producers]
    views += [_columns(c, site.width) for c in site.consumers]
    views += [_columns(m, site.width, g) for m, g in site.interleaved if isinstance(m, nn.Linear)]
    return views


def residual_options(adapter: FamilyAdapter, criterion, context) -> dict:
    """`select_to_budget` keyword arguments for residual pruning under `criterion` (a
    `prune.criteria.Criterion`: its score and policy) with its `ScoreContext`."""
    try:
        sites = adapter.residual_sites()
    except NotImplementedError as err:
        raise UserError(f"--prune-embed: {err}") from None
    if criterion.score.residual_score is None:
        raise UserError(f"--prune-embed does not support the score '{criterion.score.name}' "
                        f"(criterion '{criterion.name}') yet")
    scores, distortion = criterion.residual_scores(sites, context)
    weights = [sum(v.shape[1] for v in channel_views(s)) for s in sites]
    out = {"residual_scores": scores, "residual_weights": weights}
    if distortion is not None:
        out["residual_distortion"] = distortion
    return out
