"""MACs and parameter counts, analytic, for any choice of kept heads and MLP widths.

Counted: every Linear and Conv2d (multiply-accumulates of the weight; biases, norms,
activations and softmax are not counted) plus the two window-attention matmuls q.k^T and
attn.v. The token count each layer sees is measured once by running the unpruned model at
batch 1 with forward hooks (so padding, odd resolutions and per-stage windows are handled);
after that every count is arithmetic:

    per head of a block:    qkv N*C*3d + attention 2*N*M*d + proj N*d*C   (N tokens, window area M)
    per MLP channel:        fc1 N*C + fc2 N*C

The paper's "FLOPs" are these MACs.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import BlockSite, FamilyAdapter

MODULE_KINDS = ("attention", "mlp", "aux")
"""Report modules: attention = qkv + q.k^T + attn.v + proj (a head lives in all of them);
mlp = fc1 + fc2; aux = patch embedding, patch merging, classifier."""


@dataclass
class BlockCost:
    """Costs of one block that scale with its kept heads and MLP width."""

    name: str
    stage: int
    num_heads: int
    mlp_width: int
    macs_per_head: int
    macs_per_channel: int
    params_per_head: int
    params_per_channel: int


@dataclass
class Counts:
    """A MACs / params breakdown: totals, per stage and per module kind."""

    macs: int
    params: int
    macs_by_stage: dict[str, int] = field(default_factory=dict)
    macs_by_module: dict[str, int] = field(default_factory=dict)
    params_by_stage: dict[str, int] = field(default_factory=dict)
    params_by_module: dict[str, int] = field(default_factory=dict)


@dataclass
class CostModel:
    blocks: list[BlockCost]
    fixed_macs: dict[tuple[str, str], int]
    """(stage label, module kind) -> MACs that do not depend on heads / MLP widths."""
    fixed_params: dict[tuple[str, str], int]

    def count(self, heads: list[int] | None = None, widths: list[int] | None = None) -> Counts:
        """MACs / params with `heads[b]` heads and `widths[b]` MLP channels kept in block b
        (defaults: the unpruned model)."""
        heads = heads if heads is not None else [b.num_heads for b in self.blocks]
        widths = widths if widths is not None else [b.mlp_width for b in self.blocks]
        macs, params = defaultdict(int, self.fixed_macs), defaultdict(int, self.fixed_params)
        for block, h, m in zip(self.blocks, heads, widths):
            stage = f"stage{block.stage}"
            macs[stage, "attention"] += h * block.macs_per_head
            macs[stage, "mlp"] += m * block.macs_per_channel
            params[stage, "attention"] += h * block.params_per_head
            params[stage, "mlp"] += m * block.params_per_channel
        return Counts(
            macs=sum(macs.values()),
            params=sum(params.values()),
            macs_by_stage=_sum_by(macs, 0),
            macs_by_module=_sum_by(macs, 1),
            params_by_stage=_sum_by(params, 0),
            params_by_module=_sum_by(params, 1),
        )

    def macs(self, heads: list[int], widths: list[int]) -> int:
        """Total MACs only (fast path for the budget search)."""
        fixed = sum(self.fixed_macs.values())
        return fixed + sum(h * b.macs_per_head + m * b.macs_per_channel
                           for b, h, m in zip(self.blocks, heads, widths))


def build_cost_model(model: nn.Module, adapter: FamilyAdapter, blocks: list[BlockSite],
                     input_size: tuple[int, int, int]) -> CostModel:
    """Measure token counts with one batch-1 forward pass of the unpruned `model`."""
    tokens = tokens_per_layer(model, input_size)
    block_layers = set()
    block_costs = []
    for b in blocks:
        a, mlp = b.attn, b.mlp
        d, heads = a.head_dim, a.num_heads
        n_attn, n_mlp = tokens[id(a.qkv)], tokens[id(mlp.fc1)]
        c_in, c_out = a.qkv.in_features, a.proj.out_features
        per_head_tensors = sum(t.tensor.numel() // t.tensor.shape[t.axis] for t in a.per_head)
        block_costs.append(BlockCost(
            name=b.name, stage=b.stage, num_heads=heads, mlp_width=mlp.width,
            macs_per_head=n_attn * c_in * 3 * d + 2 * n_attn * a.window_area * d + tokens[id(a.proj)] * d * c_out,
            macs_per_channel=n_mlp * mlp.fc1.in_features + tokens[id(mlp.fc2)] * mlp.fc2.out_features,
            params_per_head=3 * d * (c_in + (a.qkv.bias is not None)) + d * c_out + per_head_tensors,
            params_per_channel=mlp.fc1.in_features + (mlp.fc1.bias is not None) + mlp.fc2.out_features,
        ))
        block_layers.update(id(m) for m in (a.qkv, a.proj, mlp.fc1, mlp.fc2))

    fixed_macs: dict[tuple[str, str], int] = defaultdict(int)
    for name, module in model.named_modules():
        if id(module) in tokens and id(module) not in block_layers:
            fixed_macs[_stage_label(adapter, name), "aux"] += tokens[id(module)] * _macs_per_token(module)

    # Parameters: everything measured from the model, minus the per-head / per-channel parts
    # of the blocks, which `count` adds back for any widths.
    fixed_params: dict[tuple[str, str], int] = defaultdict(int)
    block_of_param = {}
    for b in blocks:
        for kind, mod in (("attention", b.attn.module), ("mlp", b.mlp.fc1), ("mlp", b.mlp.fc2)):
            for p in mod.parameters():
                block_of_param[id(p)] = (f"stage{b.stage}", kind)
    for name, p in model.named_parameters():
        key = block_of_param.get(id(p)) or (_stage_label(adapter, name), "aux")
        fixed_params[key] += p.numel()
    for bc in block_costs:
        fixed_params[f"stage{bc.stage}", "attention"] -= bc.num_heads * bc.params_per_head
        fixed_params[f"stage{bc.stage}", "mlp"] -= bc.mlp_width * bc.params_per_channel
    return CostModel(block_costs, dict(fixed_macs), dict(fixed_params))


def tokens_per_layer(model: nn.Module, input_size) -> dict[int, int]:
    """id(module) -> positions it is applied to (tokens for Linear, output pixels for Conv2d)."""
    seen: dict[int, int] = {}

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            seen[id(module)] = inputs[0].numel() // module.in_features
        else:
            seen[id(module)] = output.numel() // module.out_channels

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
    return seen


def _macs_per_token(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    k = module.kernel_size[0] * module.kernel_size[1]
    return module.in_channels // module.groups * k * module.out_channels


def _stage_label(adapter: FamilyAdapter, name: str) -> str:
    stage = adapter.stage_of(name)
    return "head" if stage is None else f"stage{stage}"


def _sum_by(table: dict[tuple[str, str], int], axis: int) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for key, value in table.items():
        out[key[axis]] += value
    return dict(sorted(out.items()))
