"""Stage 6, verify: the pruned model must equal the original with the removed groups zeroed.

Zeroing a head's qkv rows (and biases) makes its values zero, so whatever its attention
weights are, the head contributes nothing; zeroing its proj columns, bias-table column and
other per-head entries (adapter's `per_head`, `per_head_layers`) as well removes every weight
the head owns. Zeroing an MLP channel's fc1 row, bias and fc2 column
makes it contribute exactly zero. So "zeroed original" and "pruned" must agree to rounding.
"""
from __future__ import annotations

import torch
from torch import nn

from .adapters import BlockSite
from .select import Plan
from .surgery import head_columns, head_rows


@torch.no_grad()
def zero_removed(blocks: list[BlockSite], plan: Plan) -> None:
    """In place: zero every weight of the heads and MLP channels that `plan` removes."""
    for block, heads, channels in zip(blocks, plan.heads, plan.mlp):
        a, mlp = block.attn, block.mlp
        kept_heads, kept_channels = set(heads), set(channels)
        drop = [h for h in range(a.num_heads) if h not in kept_heads]
        if drop:
            rows = torch.tensor(head_rows(a, drop))
            a.qkv.weight[rows] = 0
            if a.qkv.bias is not None:
                a.qkv.bias[rows] = 0
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


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> float:
    return float((a(inputs) - b(inputs)).abs().max())


def probe_input(input_size, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed random batch, independent of the global RNG."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_size, generator=gen)
