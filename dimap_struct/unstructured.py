"""The paper's own setting, `--granularity weight`: mask single weights, one threshold per module.

Modules (DIMAP.md section 2): QKV-M (every `attn.qkv` weight), PRJ-M (every `attn.proj`) and
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

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .budget import check_fraction, target_macs
from .costs import build_cost_model
from .errors import UserError
from .models import LoadedModel
from .scoring import dimap_weight_scores

WEIGHT_MODULES = ("qkv", "proj", "mlp")


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


def weight_modules(blocks) -> dict[str, WeightModule]:
    return {
        "qkv": WeightModule.build("qkv", [b.attn.qkv for b in blocks]),
        "proj": WeightModule.build("proj", [b.attn.proj for b in blocks]),
        "mlp": WeightModule.build("mlp", [layer for b in blocks for layer in (b.mlp.fc1, b.mlp.fc2)]),
    }


def prune_weights(loaded: LoadedModel, *, flops=None, params=None) -> tuple[nn.Module, dict]:
    """Mask `loaded.model` in place to the target; return (model, report)."""
    if (flops is None) == (params is None):
        raise UserError("weight granularity needs exactly one target: --params R or --flops R")
    if params is not None:
        check_weight_target(params)
        keep = float(params)
    net, adapter = loaded.model, loaded.adapter
    input_size = tuple(loaded.data_config["input_size"])
    blocks = adapter.blocks()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    costs = build_cost_model(net, adapter, blocks, input_size)
    before = costs.count()
    tokens = costs.tokens
    modules = weight_modules(blocks)
    seconds["score (per-weight dimap)"] = round(time.perf_counter() - start, 3)

    def effective_macs(p: float) -> int:
        saved = 0
        for m in modules.values():
            for layer, removed in zip(m.layers, m.removed_per_layer(round(p * m.size))):
                saved += tokens[id(layer)] * removed
        return before.macs - saved

    if params is not None:
        p = 1 - keep
        target = None
    else:
        check_fraction(flops)
        target = target_macs(flops, before.macs)
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
    report = _weight_report(loaded, blocks, modules, removed, before, effective_macs(p), target, flops, params)
    seconds["mask"] = round(time.perf_counter() - start, 3)
    report["timings_s"] = seconds
    return net, report


def _weight_report(loaded, blocks, modules, removed, before, eff_macs, target, flops, params) -> dict:
    from .report import RANDOM_WEIGHTS_NOTE, source_section

    nonzero = sum(int(torch.count_nonzero(p)) for p in loaded.model.parameters())
    dense_nonzero = before.params  # random / trained weights have no exact zeros to begin with
    prunable = sum(m.size for m in modules.values())
    kept_prunable = sum(m.size - removed[n] for n, m in modules.items())
    block_rows = []
    for b in blocks:
        layers = (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)
        total = sum(layer.weight.numel() for layer in layers)
        kept = sum(int(torch.count_nonzero(layer.weight)) for layer in layers)
        block_rows.append({"name": b.name, "stage": b.stage, "kept_weight_fraction": kept / total,
                           "kept_per_layer": {n: int(torch.count_nonzero(layer.weight)) / layer.weight.numel()
                                              for n, layer in zip(("qkv", "proj", "fc1", "fc2"), layers)}})
    target_dict = ({"params": str(params), "kept_prunable_fraction": float(params)} if params is not None
                   else {"flops": str(flops), "macs": target, "ratio": target / before.macs})
    return {
        **source_section(loaded),
        "granularity": "weight",
        "criterion": "dimap",
        "criterion_summary": "the paper's per-weight DIMAP score, one threshold per module (QKV-M, PRJ-M, MLP-M)",
        "target": target_dict,
        "achieved": {"effective_macs": eff_macs, "ratio": eff_macs / before.macs,
                     "nonzero_params": nonzero, "params_ratio": nonzero / dense_nonzero,
                     "kept_prunable_fraction": kept_prunable / prunable},
        "modules": {n: {"weights": m.size, "removed": removed[n], "kept_fraction": 1 - removed[n] / m.size,
                        "threshold": m.threshold(removed[n])} for n, m in modules.items()},
        "original": {"macs": before.macs, "params": before.params},
        "pruned": {"effective_macs": eff_macs, "nonzero_params": nonzero, "dense_params": before.params},
        "blocks": block_rows,
        "notes": [
            "Weight (unstructured) pruning, the paper's setting: weights are zeroed, not removed. The exported "
            "ONNX model is dense with zeros and is NOT faster; use structured pruning for speed.",
            "Effective MACs count Linear MACs on non-zero weights only (as the paper counts FLOPs); the "
            "window-attention matmuls, norms and the never-pruned AUX-M layers count in full.",
        ] + ([RANDOM_WEIGHTS_NOTE] if loaded.random_init else []),
    }


def check_weight_target(value) -> None:
    """--params must be a plain fraction (no absolute form)."""
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--params {value!r}: expected a fraction 0 < R <= 1") from None
    if math.isnan(r) or not 0 < r <= 1:
        raise UserError(f"--params {value}: the fraction of prunable weights to keep must satisfy 0 < R <= 1")

