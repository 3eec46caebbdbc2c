"""The paper's own setting, `--granularity weight`: mask single weights, one threshold per module.

Modules (docs/method.md section 5): QKV-M (every `attn.qkv` weight), PRJ-M (every `attn.proj`) and
MLP-M (every `mlp.fc1` and `mlp.fc2`); AUX-M is never pruned, biases are not pruned. Each
weight is scored by the paper's per-layer Imp(w) (`scoring.dimap_weight_scores`); inside a
module the lowest-scored weights go first and every module loses the same fraction p of its
weights, so each module has one threshold. Within a layer the score falls with magnitude, so
each layer loses a prefix of its magnitude order.

Targets: `params=R` keeps the fraction R of each module's weights; `flops=R` searches p so
the effective MACs (Linear MACs counted on non-zero weights only, as the paper does) are R
of the original. The result is the same dense model with zeros: it is NOT faster.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..report.build import build_report
from ..report.schema import Architecture, BlockRow, Counts, Report
from .budget import Budget
from .costs import build_cost_model
from .scoring import dimap_weight_scores


@dataclass
class WeightModule:
    """All prunable weights of one module, ranked: `rank[i]` is the removal position of the
    i-th weight of the concatenated flat layers (0 = removed first)."""

    name: str
    layers: list[nn.Linear]
    rank: torch.Tensor
    scores_sorted: torch.Tensor
    layer_ranks_sorted: list[torch.Tensor]

    @classmethod
    def build(cls, name: str, layers: list[nn.Linear]) -> "WeightModule":
        scores = torch.cat([dimap_weight_scores(layer.weight).reshape(-1) for layer in layers])
        sorted_scores, order = torch.sort(scores, stable=True)  # ties: earlier layer / flat index first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        slices, start = [], 0
        for layer in layers:
            n = layer.weight.numel()
            slices.append(torch.sort(rank[start:start + n]).values)
            start += n
        return cls(name, layers, rank, sorted_scores, slices)

    @property
    def size(self) -> int:
        return len(self.rank)

    def removed_per_layer(self, k: int) -> list[int]:
        """How many weights of each layer are among the module's k lowest-scored."""
        return [int(torch.searchsorted(r, k)) for r in self.layer_ranks_sorted]

    def keep_masks(self, k: int) -> list[torch.Tensor]:
        masks, start = [], 0
        for layer in self.layers:
            n = layer.weight.numel()
            masks.append((self.rank[start:start + n] >= k).reshape(layer.weight.shape))
            start += n
        return masks

    def threshold(self, k: int) -> float | None:
        return float(self.scores_sorted[k - 1]) if k else None


def module_layers(blocks) -> dict[str, list[nn.Linear]]:
    """The prunable layers of each module (QKV-M, PRJ-M, MLP-M)."""
    return {"qkv": [layer for b in blocks for layer, _ in b.attn.projections],
            "proj": [b.attn.proj for b in blocks],
            "mlp": [layer for b in blocks for layer in (b.mlp.fc1, b.mlp.fc2)]}


def weight_modules(blocks) -> dict[str, WeightModule]:
    return {name: WeightModule.build(name, layers) for name, layers in module_layers(blocks).items()}


def zero_masks(blocks) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(weight, 0/1 mask of its non-zero entries) for every prunable layer: what fine-tuning
    re-applies after each step, so that the weights this granularity zeroed stay zero."""
    return [(layer.weight, (layer.weight != 0).to(layer.weight.dtype))
            for layers in module_layers(blocks).values() for layer in layers]


def prune_weights(loaded, options, budget: Budget) -> tuple[nn.Module, Report]:
    """Mask `loaded.model` (a `models.LoadedModel`) in place to `budget` (`options.budget` of a
    validated `CompressOptions` of weight granularity); return (model, report)."""
    net, adapter = loaded.model, loaded.adapter
    blocks = adapter.blocks()
    costs = build_cost_model(net, adapter, blocks, tuple(loaded.data_config["input_size"]))
    before = costs.count()
    tokens = costs.tokens
    modules = weight_modules(blocks)

    def effective_macs(p: float) -> int:
        saved = 0
        for m in modules.values():
            for layer, removed in zip(m.layers, m.removed_per_layer(round(p * m.size))):
                saved += tokens[id(layer)] * removed
        return before.macs - saved

    if budget.weights:
        p, target = 1 - budget.fraction, None
    else:
        target = budget.target_macs(before.macs)
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if effective_macs(mid) <= target else (mid, hi)
        p = min((lo, hi), key=lambda q: abs(effective_macs(q) - target))

    removed = {name: round(p * m.size) for name, m in modules.items()}
    with torch.no_grad():
        for name, m in modules.items():
            for layer, mask in zip(m.layers, m.keep_masks(removed[name])):
                layer.weight.mul_(mask)
    return net, _weight_report(loaded, options, budget, blocks, modules, removed, before, effective_macs(p), target)


def _weight_report(loaded, options, budget: Budget, blocks, modules, removed, before: Counts, eff_macs: int, target):
    nonzero = sum(int(torch.count_nonzero(p)) for p in loaded.model.parameters())
    prunable = sum(m.size for m in modules.values())
    kept_prunable = sum(m.size - removed[n] for n, m in modules.items())
    rows = []
    for b in blocks:
        qkv = b.attn.qkv_tensor()
        layers = dict(zip(("proj", "fc1", "fc2"), (b.attn.proj, b.mlp.fc1, b.mlp.fc2)))
        kept = {"qkv": int(torch.count_nonzero(qkv)) / qkv.numel(),
                **{n: int(torch.count_nonzero(layer.weight)) / layer.weight.numel() for n, layer in layers.items()}}
        rows.append(BlockRow(name=b.name, stage=b.stage, heads_before=b.attn.num_heads, heads=b.attn.num_heads,
                             mlp_width_before=b.mlp.width, mlp_width=b.mlp.width,
                             attention_kept=(kept["qkv"] + kept["proj"]) / 2, mlp_kept=(kept["fc1"] + kept["fc2"]) / 2,
                             kept_per_layer=kept))
    # random / trained weights have no exact zeros to begin with: the dense count is the baseline
    return build_report(
        loaded, options.recipe(), granularity="weight", architecture=Architecture(loaded.name, loaded.model_kwargs),
        criterion="dimap",
        criterion_summary="the paper's per-weight DIMAP score, one threshold per module (QKV-M, PRJ-M, MLP-M)",
        score_mode=None, target=budget.text, target_macs=target, original=before,
        pruned=Counts(macs=eff_macs, params=nonzero), kept_prunable_fraction=kept_prunable / prunable,
        runtime_macs=before.macs, blocks=rows, residual=None,
        selection={"policy": "weight", "modules": {
            n: {"weights": m.size, "removed": removed[n], "kept_fraction": 1 - removed[n] / m.size,
                "threshold": m.threshold(removed[n])} for n, m in modules.items()}},
        verification={},
        notes=[
            "Weight (unstructured) pruning, the paper's setting: weights are zeroed, not removed. The exported "
            "ONNX model is dense with zeros and is NOT faster; use structured pruning for speed.",
            "Effective MACs count Linear MACs on non-zero weights only (as the paper counts FLOPs); the "
            "window-attention matmuls, norms and the never-pruned AUX-M layers count in full.",
        ])
