"""Verify: the pruned model must equal the original with the removed groups zeroed.

`mask(model, adapter, plan)` builds that reference in place on an unpruned copy:
- a head: its qkv rows (and biases) are zeroed, so its values are zero and it contributes
  nothing whatever its attention weights; its proj columns, bias-table column and other
  per-head entries (adapter's `per_head`, `per_head_layers`) are zeroed too;
- an MLP channel: its fc1 row, bias and fc2 column are zeroed, so it contributes exactly zero;
- a residual channel: its producer rows and consumer columns are zeroed, and every LayerNorm
  over the stream becomes a `KeptLayerNorm`, which normalises over the kept entries only
  (removing a channel changes a LayerNorm's mean and variance).
So "masked original" and "pruned" must agree to rounding (docs/method.md section 7).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..models.adapters import BlockSite, FamilyAdapter, ResidualSite
from .cut import head_columns, interleaved_index
from .select import Plan


def mask(model: nn.Module, adapter: FamilyAdapter, plan: Plan) -> None:
    """In place, on an unpruned model wrapped by `adapter`: zero everything `plan` removes."""
    zero_removed(adapter.blocks(), plan)
    if plan.residual is not None:
        for site, keep in zip(adapter.residual_sites(), plan.residual):
            mask_residual(model, site, keep)


@torch.no_grad()
def zero_removed(blocks: list[BlockSite], plan: Plan) -> None:
    """In place: zero every weight of the heads and MLP channels that `plan` removes."""
    for block, heads, channels in zip(blocks, plan.heads, plan.mlp):
        a, mlp = block.attn, block.mlp
        kept_heads, kept_channels = set(heads), set(channels)
        drop = [h for h in range(a.num_heads) if h not in kept_heads]
        if drop:
            for layer, rows in a.projection_rows(drop):
                rows = torch.tensor(rows)
                layer.weight[rows] = 0
                if layer.bias is not None:
                    layer.bias[rows] = 0
            a.proj.weight[:, torch.tensor(head_columns(a, drop))] = 0
            for t in a.per_head:
                t.tensor.index_fill_(t.axis, torch.tensor(t.indices(drop)), 0)
            for layer in a.per_head_layers:
                layer.weight[drop] = 0
                if layer.bias is not None:
                    layer.bias[drop] = 0
        drop = torch.tensor([j for j in range(mlp.width) if j not in kept_channels], dtype=torch.long)
        if len(drop):
            mlp.fc1.weight[drop] = 0
            if mlp.fc1.bias is not None:
                mlp.fc1.bias[drop] = 0
            mlp.fc2.weight[:, drop] = 0


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
    """In place, on an unpruned model: zero the removed channels' producer rows and consumer
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


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> float:
    return float((a(inputs) - b(inputs)).abs().max())


def probe_input(input_size, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed random batch, independent of the global RNG."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_size, generator=gen)
