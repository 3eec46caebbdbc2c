"""Cut: physically remove attention heads, MLP channels and residual channels.

`cut(model, adapter, plan, input_size)` is the one entry point: the pipeline and the
checkpoint rebuild (`prune.replay.build_architecture`) both call it.

MLP channels go through torch-pruning's DependencyGraph: it finds every layer coupled to an
fc1 output channel (fc2's input column, and anything a model variant adds) and prunes them
together; we check that the coupled set is exactly what the adapter declared. Heads and
residual channels are cut by our own functions, because torch-pruning 1.6.1 cannot: its head
grouping does not cut the per-head relative-position-bias table (the pruned timm Swin fails
in forward), and a residual channel spans layers its graph does not couple (the next stage's
2x2 patch merging reads 4 interleaved copies). Both still use torch-pruning's per-layer
pruning functions on the Linear / Conv2d layers.
"""
from __future__ import annotations

import warnings

import torch
import torch_pruning as tp
from torch import nn

from ..models.adapters import AttentionSite, BlockSite, FamilyAdapter, ResidualSite
from .select import Plan


def head_columns(site: AttentionSite, heads: list[int]) -> list[int]:
    """proj input columns (layout (H, d)) belonging to `heads`."""
    d = site.head_dim
    return [head * d + i for head in heads for i in range(d)]


def interleaved_index(width: int, groups: int, channels: list[int]) -> list[int]:
    """Entries k*width + c (k < groups) of `channels` in a concatenation of `groups` copies."""
    return [k * width + c for k in range(groups) for c in channels]


def cut(model: nn.Module, adapter: FamilyAdapter, plan: Plan, input_size) -> None:
    """Cut `model` in place to the structure `plan` keeps: heads and MLP channels of every
    block, then (if `plan.residual`) residual channels of every stage. `adapter` wraps `model`;
    `input_size` (C, H, W) traces the dependency graph."""
    blocks = adapter.blocks()
    graph = build_dependency_graph(model, blocks, input_size)
    for block, heads, channels in zip(blocks, plan.heads, plan.mlp):
        cut_heads(adapter, block.attn, heads)
        cut_mlp(graph, block, channels)
    if plan.residual is not None:
        for site, keep in zip(adapter.residual_sites(), plan.residual):
            cut_residual(adapter, site, keep)


def cut_heads(adapter: FamilyAdapter, site: AttentionSite, keep: list[int]) -> None:
    """Remove every head of `site` not in `keep` (qkv rows, proj columns, per-head tensors
    and per-head layer rows). With `keep` empty the whole branch goes: its module then returns
    its output bias (`FamilyAdapter.remove_attention`)."""
    kept = set(keep)
    drop = [h for h in range(site.num_heads) if h not in kept]
    if not drop:
        return
    if not keep:
        site.module.removed_head_dim = site.head_dim  # no head left to infer it from
    for layer, rows in site.projection_rows(drop):
        tp.prune_linear_out_channels(layer, rows)
    tp.prune_linear_in_channels(site.proj, head_columns(site, drop))
    for layer in site.per_head_layers:
        tp.prune_linear_out_channels(layer, drop)
    for tensor in site.per_head:
        old = tensor.tensor
        index = torch.tensor(tensor.indices(sorted(keep)), dtype=torch.long)
        new = old.data.index_select(tensor.axis, index).clone()
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        setattr(tensor.module, tensor.name, new)  # a plain tensor stays a registered buffer
    adapter.set_num_heads(site, len(keep))
    site.num_heads = len(keep)
    if not keep:
        adapter.remove_attention(site)


def build_dependency_graph(model: nn.Module, blocks: list[BlockSite], input_size) -> tp.DependencyGraph:
    """Trace `model` once (batch 1). Per-head parameters are declared so torch-pruning does not
    guess their pruning dimension (buffers are not parameters to it)."""
    unwrapped = [(t.tensor, t.axis) for b in blocks for t in b.attn.per_head if isinstance(t.tensor, nn.Parameter)]
    with warnings.catch_warnings(), torch.enable_grad():  # the tracer needs autograd, even under no_grad
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.zeros(1, *input_size), unwrapped_parameters=unwrapped)


def cut_mlp(graph: tp.DependencyGraph, block: BlockSite, keep: list[int]) -> None:
    """Remove every hidden channel of the block's MLP not in `keep`, via the dependency graph."""
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    kept = set(keep)
    drop = [j for j in range(fc1.out_features) if j not in kept]
    if not drop:
        return
    group = graph.get_pruning_group(fc1, tp.prune_linear_out_channels, idxs=drop)
    touched = {id(dep.target.module) for dep, _ in group if isinstance(dep.target.module, nn.Module)
               and any(True for _ in dep.target.module.parameters(recurse=False))}
    if touched != {id(fc1), id(fc2)}:
        raise RuntimeError(f"{block.name}: MLP channels are coupled to layers beyond fc1/fc2; "
                           "this model variant needs its own adapter rule")
    group.prune()


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
        if isinstance(module, nn.LayerNorm):
            keep_layernorm_entries(module, interleaved_index(site.width, groups, sorted(kept)))
        else:
            tp.prune_linear_in_channels(module, interleaved_index(site.width, groups, drop))
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
