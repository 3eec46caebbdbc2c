"""Costs: MACs and parameter counts, analytic, for any choice of kept heads and MLP widths.

Counted: every Linear and Conv2d (multiply-accumulates of the weight; biases, norms,
activations and softmax are not counted) plus the two window-attention matmuls q.k^T and
attn.v. The token count each layer sees is measured once by running the unpruned model at
batch 1 with forward hooks (so padding, odd resolutions and per-stage windows are handled);
after that every count is arithmetic:

    per head of a block:    qkv N*C*3d + attention 2*N*M*d + proj N*d*C   (N tokens, window area M)
                            + P*K per per-head layer (one output row per head, K inputs,
                            applied at P positions: Swin v2's position-bias MLP)
    per MLP channel:        fc1 N*C + fc2 N*C

The paper's "FLOPs" are these MACs.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.adapters import BlockSite, FamilyAdapter
from ..report.schema import Counts

@dataclass
class BlockCost:
    """Costs of one block that scale with its kept heads and MLP width (and, through the
    `*_per_c` parts, with its stage's residual width `width`)."""

    name: str
    stage: int
    num_heads: int
    mlp_width: int
    macs_per_head: int
    macs_per_channel: int
    params_per_head: int
    params_per_channel: int
    width: int = 0
    """Residual width C of the block's stage."""
    macs_per_head_per_c: int = 0
    """Part of macs_per_head proportional to C (qkv and proj): the rest is the attention matmuls."""
    params_per_head_per_c: int = 0
    macs_per_channel_per_c: int = 0
    params_per_channel_per_c: int = 0

    def head_macs(self, c: int) -> int:
        return self.macs_per_head + self.macs_per_head_per_c * (c - self.width)

    def channel_macs(self, c: int) -> int:
        return self.macs_per_channel + self.macs_per_channel_per_c * (c - self.width)

    def head_params(self, c: int) -> int:
        return self.params_per_head + self.params_per_head_per_c * (c - self.width)

    def channel_params(self, c: int) -> int:
        return self.params_per_channel + self.params_per_channel_per_c * (c - self.width)


@dataclass
class Term:
    """A MACs or params amount outside the per-head / per-channel parts, proportional to the
    residual widths of `stages` (empty: constant)."""

    label: str
    kind: str
    amount: int
    stages: tuple[int, ...] = ()

    def at(self, widths: list[int], full: list[int]) -> int:
        if not self.stages:
            return self.amount
        num = den = 1
        for s in self.stages:
            num, den = num * widths[s], den * full[s]
        return self.amount * num // den


@dataclass
class CostModel:
    blocks: list[BlockCost]
    fixed_macs: list[Term]
    """MACs that do not depend on heads / MLP widths (they may depend on residual widths)."""
    fixed_params: list[Term]
    residual_widths: list[int] = field(default_factory=list)
    """Full residual width per stage."""
    tokens: dict[int, int] = field(default_factory=dict)
    """id(Linear / Conv2d) -> positions it is applied to in one batch-1 forward (`tokens_per_layer`)."""

    def count(self, heads: list[int] | None = None, widths: list[int] | None = None,
              residual: list[int] | None = None) -> Counts:
        """MACs / params with `heads[b]` heads and `widths[b]` MLP channels kept in block b and
        `residual[s]` residual channels in stage s (defaults: the unpruned model)."""
        heads = heads if heads is not None else [b.num_heads for b in self.blocks]
        widths = widths if widths is not None else [b.mlp_width for b in self.blocks]
        full = self.residual_widths
        residual = residual if residual is not None else full
        macs, params = defaultdict(int), defaultdict(int)
        for term in self.fixed_macs:
            macs[term.label, term.kind] += term.at(residual, full)
        for term in self.fixed_params:
            params[term.label, term.kind] += term.at(residual, full)
        for block, h, m in zip(self.blocks, heads, widths):
            stage = f"stage{block.stage}"
            c = residual[block.stage] if residual else block.width
            macs[stage, "attention"] += h * block.head_macs(c)
            macs[stage, "mlp"] += m * block.channel_macs(c)
            params[stage, "attention"] += h * block.head_params(c)
            params[stage, "mlp"] += m * block.channel_params(c)
        return Counts(
            macs=sum(macs.values()),
            params=sum(params.values()),
            macs_by_stage=_sum_by(macs, 0),
            macs_by_module=_sum_by(macs, 1),
            params_by_stage=_sum_by(params, 0),
            params_by_module=_sum_by(params, 1),
        )

    def macs(self, heads: list[int], widths: list[int], residual: list[int] | None = None) -> int:
        """Total MACs only (fast path for the budget search)."""
        if residual is not None:
            return self.count(heads, widths, residual).macs
        fixed = sum(t.amount for t in self.fixed_macs)
        return fixed + sum(h * b.macs_per_head + m * b.macs_per_channel
                           for b, h, m in zip(self.blocks, heads, widths))


def residual_channel_macs(costs: CostModel) -> list[int]:
    """MACs one residual channel of each stage costs in the unpruned model (every block, norm,
    patch embedding and merging of the stage that touches it)."""
    full = list(costs.residual_widths)
    before = costs.macs([b.num_heads for b in costs.blocks], [b.mlp_width for b in costs.blocks], full)
    out = []
    for s in range(len(full)):
        fewer = full[:s] + [full[s] - 1] + full[s + 1:]
        out.append(before - costs.macs([b.num_heads for b in costs.blocks], [b.mlp_width for b in costs.blocks],
                                       fewer))
    return out


def _residual_scaling(adapter: FamilyAdapter) -> tuple[dict[int, tuple[int, ...]], list[int]]:
    """id(parameter) -> stages whose residual width it is proportional to; full widths."""
    try:
        sites = adapter.residual_sites()
    except NotImplementedError:
        return {}, []
    scale: dict[int, list[int]] = defaultdict(list)
    for site in sites:
        s = site.stage
        for p in site.producers:
            scale[id(p.weight)].append(s)
            if p.bias is not None:
                scale[id(p.bias)].append(s)
        for m in site.consumers:
            scale[id(m.weight)].append(s)
        for m in site.norms + [m for m, _ in site.interleaved if isinstance(m, nn.LayerNorm)]:
            for p in (m.weight, m.bias):
                if p is not None:
                    scale[id(p)].append(s)
        for m, _ in site.interleaved:
            if isinstance(m, nn.Linear):
                scale[id(m.weight)].append(s)
        for t in site.per_channel:
            scale[id(t.tensor)].append(s)
    return {k: tuple(v) for k, v in scale.items()}, [site.width for site in sites]


def build_cost_model(model: nn.Module, adapter: FamilyAdapter, blocks: list[BlockSite],
                     input_size: tuple[int, int, int]) -> CostModel:
    """Measure token counts with one batch-1 forward pass of the unpruned `model`."""
    tokens = tokens_per_layer(model, input_size)
    scale, full_widths = _residual_scaling(adapter)
    block_layers, owned = set(), set()
    block_costs = []
    for b in blocks:
        a, mlp = b.attn, b.mlp
        d, heads = a.head_dim, a.num_heads
        projections = [layer for layer, _ in a.projections]
        n_attn, n_mlp = tokens[id(projections[0])], tokens[id(mlp.fc1)]
        c_in, c_out = a.in_features, a.proj.out_features
        param_heads = [t for t in a.per_head if isinstance(t.tensor, nn.Parameter)]
        per_head_params = [t.tensor for t in param_heads]
        per_head_tensors = sum(t.tensor.numel() // t.tensor.shape[t.axis] * t.per_head_size for t in param_heads)
        head_layers = a.per_head_layers
        qkv_per_c, proj_per_c = n_attn * 3 * d, tokens[id(a.proj)] * d
        block_costs.append(BlockCost(
            name=b.name, stage=b.stage, num_heads=heads, mlp_width=mlp.width,
            macs_per_head=qkv_per_c * c_in + 2 * n_attn * a.window_area * d + proj_per_c * c_out
            + sum(tokens[id(m)] * m.in_features for m in head_layers),
            macs_per_channel=n_mlp * mlp.fc1.in_features + tokens[id(mlp.fc2)] * mlp.fc2.out_features,
            params_per_head=sum(parts * d * (c_in + (layer.bias is not None)) for layer, parts in a.projections)
            + d * c_out + per_head_tensors
            + sum(m.in_features + (m.bias is not None) for m in head_layers),
            params_per_channel=mlp.fc1.in_features + (mlp.fc1.bias is not None) + mlp.fc2.out_features,
            width=c_in,
            macs_per_head_per_c=qkv_per_c + proj_per_c,
            params_per_head_per_c=4 * d,
            macs_per_channel_per_c=n_mlp + tokens[id(mlp.fc2)],
            params_per_channel_per_c=2,
        ))
        block_layers.update(id(m) for m in (*projections, a.proj, mlp.fc1, mlp.fc2, *head_layers))
        owned.update(id(p) for p in (*[t for layer in projections for t in (layer.weight, layer.bias)],
                                     a.proj.weight, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, *per_head_params)
                     if p is not None)
        owned.update(id(p) for m in head_layers for p in m.parameters())

    fixed_macs = []
    for name, module in model.named_modules():
        if id(module) in tokens and id(module) not in block_layers:
            fixed_macs.append(Term(_stage_label(adapter, name), "aux", tokens[id(module)] * _macs_per_token(module),
                                   scale.get(id(module.weight), ())))

    # Parameters outside the per-head / per-channel parts, each with its residual scaling.
    kind_of = {}
    for b in blocks:
        for kind, mod in (("attention", b.attn.module), ("mlp", b.mlp.fc1), ("mlp", b.mlp.fc2)):
            for p in mod.parameters():
                kind_of[id(p)] = (f"stage{b.stage}", kind)
    fixed_params = [Term(*(kind_of.get(id(p)) or (_stage_label(adapter, name), "aux")), p.numel(),
                         scale.get(id(p), ()))
                    for name, p in model.named_parameters() if id(p) not in owned]
    return CostModel(block_costs, fixed_macs, fixed_params, full_widths, tokens)


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
