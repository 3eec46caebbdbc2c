"""Residual (embedding) channel pruning, `--prune-embed`: score, cut and mask whole channels
of a stage's residual stream (DIMAP.md section 4; the adapter declares each `ResidualSite`).

Scoring (DIMAP option A, like heads and MLP channels): in every layer a channel touches, its
energy is the sum of w^2 over its slice (producer rows, consumer columns, the 4 interleaved
columns of the next merging); the per-layer relative-energy score is averaged over those
layers. LayerNorm affine entries are AUX-M (never scored, removed with their channel).
Residual channels form their own module: they compete across all stages, not with heads or
MLP channels.

Removing a channel changes every LayerNorm that normalises over it (mean and variance are taken
over fewer entries), so the masked reference for verification replaces those LayerNorms by
`KeptLayerNorm`, which normalises over the kept entries only and outputs zeros elsewhere.
"""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from .adapters.base import FamilyAdapter, ResidualSite


def _rows(module: nn.Module, width: int) -> torch.Tensor:
    """(width, n) view of what each channel owns in a producer (output rows / conv filters)."""
    return module.weight.detach().reshape(width, -1)


def _columns(module: nn.Linear, width: int, groups: int = 1) -> torch.Tensor:
    """(width, n) view of the input columns of each channel (groups interleaved copies)."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], groups, width).permute(2, 0, 1).reshape(width, -1)


def channel_views(site: ResidualSite) -> list[torch.Tensor]:
    views = [_rows(p, site.width) for p in site.producers]
    views += [_columns(c, site.width) for c in site.consumers]
    views += [_columns(m, site.width, g) for m, g in site.interleaved if isinstance(m, nn.Linear)]
    return views


def interleaved_index(width: int, groups: int, channels: list[int]) -> list[int]:
    return [k * width + c for k in range(groups) for c in channels]


def cut_residual(adapter: FamilyAdapter, site: ResidualSite, keep: list[int]) -> None:
    """Physically remove every channel of `site` not in `keep` (sorted), in place."""
    kept = set(keep)
    drop = [c for c in range(site.width) if c not in kept]
    if not drop:
        return
    for p in site.producers:
        (tp.prune_conv_out_channels if isinstance(p, nn.Conv2d) else tp.prune_linear_out_channels)(p, drop)
    for c in site.consumers:
        tp.prune_linear_in_channels(c, drop)
    for n in site.norms:
        keep_layernorm_entries(n, sorted(kept))
    for module, groups in site.interleaved:
        idx = interleaved_index(site.width, groups, drop)
        if isinstance(module, nn.LayerNorm):
            keep_layernorm_entries(module, interleaved_index(site.width, groups, sorted(kept)))
        else:
            tp.prune_linear_in_channels(module, idx)
    index = torch.tensor(sorted(kept))
    for t in site.per_channel:
        setattr(t.module, t.name, nn.Parameter(t.tensor.data.index_select(t.axis, index).clone()))
    adapter.set_residual_width(site.stage, len(kept))
    site.width = len(kept)


@torch.no_grad()
def keep_layernorm_entries(norm: nn.LayerNorm, keep: list[int]) -> None:
    """Shrink a LayerNorm over its last dimension to the entries `keep` (in this order).

    Written by hand: torch-pruning 1.6.1's `prune_layernorm_out_channels` builds its kept index
    from a set and calls `Tensor.sort()` without using the result, so once the kept entries
    are not in the set's iteration order the affine weights come out permuted."""
    index = torch.tensor(keep, dtype=torch.long)
    if norm.weight is not None:
        norm.weight = nn.Parameter(norm.weight.data.index_select(0, index).clone())
    if norm.bias is not None:
        norm.bias = nn.Parameter(norm.bias.data.index_select(0, index).clone())
    norm.normalized_shape = (len(keep),)


class KeptLayerNorm(nn.Module):
    """A LayerNorm that normalises only the entries `kept` and outputs zero for the others:
    what a physically narrower LayerNorm computes, laid out at the original width."""

    def __init__(self, norm: nn.LayerNorm, kept: list[int]):
        super().__init__()
        self.norm = norm
        self.register_buffer("kept", torch.tensor(sorted(kept), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        w = self.norm.weight[self.kept] if self.norm.weight is not None else None
        b = self.norm.bias[self.kept] if self.norm.bias is not None else None
        out[..., self.kept] = F.layer_norm(x[..., self.kept], (len(self.kept),), w, b, self.norm.eps)
        return out


@torch.no_grad()
def mask_residual(model: nn.Module, site: ResidualSite, keep: list[int]) -> None:
    """In place, on an unpruned copy: zero the removed channels' producer rows and consumer
    columns and swap the affected LayerNorms for `KeptLayerNorm`."""
    drop = torch.tensor([c for c in range(site.width) if c not in set(keep)], dtype=torch.long)
    if not len(drop):
        return
    for p in site.producers:
        p.weight[drop] = 0
        if p.bias is not None:
            p.bias[drop] = 0
    for c in site.consumers:
        c.weight[:, drop] = 0
    parents = {id(m): (parent, name) for parent in model.modules() for name, m in parent.named_children()}
    swaps = [(n, keep) for n in site.norms]
    for module, groups in site.interleaved:
        if isinstance(module, nn.LayerNorm):
            swaps.append((module, interleaved_index(site.width, groups, sorted(keep))))
        else:
            module.weight[:, torch.tensor(interleaved_index(site.width, groups, drop.tolist()))] = 0
    for norm, kept in swaps:
        parent, name = parents[id(norm)]
        setattr(parent, name, KeptLayerNorm(norm, kept))


def residual_options(adapter: FamilyAdapter, criterion: str, seed: int = 0) -> dict:
    """`select_to_budget` keyword arguments for residual pruning under `criterion`: criteria
    that score groups from weight views (`Criterion.view_score`: DIMAP, L1 / L2 norms) score
    each channel from its views in every layer it touches, `random` draws seeded scores.
    Data-driven criteria are not supported yet."""
    from .criteria import get_criterion
    from .errors import UserError

    try:
        sites = adapter.residual_sites()
    except NotImplementedError as err:
        raise UserError(f"--prune-embed: {err}") from None
    view_score = get_criterion(criterion).view_score
    if view_score is not None:
        scores = [view_score(channel_views(s)) for s in sites]
    elif criterion == "random":
        gen = torch.Generator().manual_seed(seed + 7919)
        scores = [torch.rand(s.width, generator=gen, dtype=torch.float64) for s in sites]
    else:
        raise UserError(f"--prune-embed does not support criterion '{criterion}' yet")
    weights = [sum(v.shape[1] for v in channel_views(s)) for s in sites]
    return {"residual_scores": scores, "residual_weights": weights}
