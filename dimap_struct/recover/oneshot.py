"""One-shot recovery from calibration images (no training): after the cut, the layers that read
the removed groups (`proj` for heads, `fc2` for MLP channels) are corrected so that they
reproduce the unpruned layer's output on calibration activations (docs/method.md section 8).

The statistics are those of `prune.calibration.collect_stats`: per layer, the Gram matrix G of
its input (a constant 1 appended) over the unpruned model's calibration activations. The
layer's output is y = A x with A = [W b], so everything below is exact on the calibration set
given G:

- bias compensation: the kept columns stay, and b' = b + W_R mean(x_R) takes the mean
  contribution of the removed inputs R;
- refit (ridge least squares): A'_K = A G[:, K] (G[K, K] + lambda I)^-1 over the kept inputs
  K (the constant included), lambda = `ridge` x the mean of diag(G[K, K]), solved in float64.

The calibration error of a choice A' is tr((A' - A) G (A' - A)^T) / tokens; a layer whose
recovery would raise it above the plain cut's is left as cut (a degenerate refit) and the
report says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..prune.calibration import LayerStats, calibration_error, measured_layers


@dataclass
class RecoveryReport:
    method: str
    images: int
    data: str
    data_sha256: str
    ridge: float
    seconds: float = 0.0
    layers: list[dict] = field(default_factory=list)
    """Per layer: name, calibration error (mean squared output error per token) of the plain cut
    and after recovery, and whether the recovery was kept."""

    @property
    def error_before(self) -> float:
        return sum(layer["error_cut"] for layer in self.layers)

    @property
    def error_after(self) -> float:
        return sum(layer["error_recovered"] for layer in self.layers)

    def to_dict(self) -> dict:
        return {"method": self.method, "images": self.images, "data": self.data, "data_sha256": self.data_sha256,
                "ridge": self.ridge, "seconds": round(self.seconds, 2), "error_cut": self.error_before,
                "error_recovered": self.error_after,
                "layers_left_as_cut": [layer["name"] for layer in self.layers if not layer["kept"]],
                "layers": self.layers}


def solve(stats: LayerStats, kept: list[int], rows: list[int] | None, method: str, ridge: float,
          has_bias: bool = True) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """New (weight, bias) of one layer that keeps input columns `kept` (and output rows `rows`,
    all if None), by `method`; with the calibration error of the plain cut and of the result.
    The result is the plain cut when recovery would not lower the error. A layer without a bias
    (`has_bias` False) is refitted on its kept columns alone; bias compensation needs a bias."""
    features = stats.weight.shape[1]
    a = torch.cat([stats.weight, stats.bias[:, None]], 1)
    if rows is not None:
        a = a[rows]
    if not has_bias and method == "bias":
        method = "none"
    keep = torch.tensor(list(kept) + ([features] if has_bias else []), dtype=torch.long)
    cut = torch.zeros_like(a)
    cut[:, keep] = a[:, keep]
    new = cut.clone()
    if method == "bias":
        mean = stats.gram[features, :features] / max(stats.tokens, 1)
        removed = torch.ones(features, dtype=torch.bool)
        removed[keep[:-1]] = False
        new[:, features] += a[:, :features][:, removed] @ mean[removed]
    elif method == "refit":
        g_kk = stats.gram[keep][:, keep]
        damp = ridge * float(torch.diagonal(g_kk).mean()) if len(keep) else 0.0
        system = g_kk + damp * torch.eye(len(keep), dtype=torch.float64)
        rhs = a @ stats.gram[:, keep]  # (out, |K|)
        new[:, keep] = torch.linalg.solve(system, rhs.T).T
    error_cut = calibration_error(cut, a, stats.gram, stats.tokens)
    error_new = calibration_error(new, a, stats.gram, stats.tokens)
    columns = torch.tensor(list(kept), dtype=torch.long)
    if not error_new <= error_cut:  # NaN counts as worse
        return cut[:, columns], cut[:, features], error_cut, error_cut
    return new[:, columns], new[:, features], error_cut, error_new


@torch.no_grad()
def recover(blocks, plan, stats: dict[str, LayerStats], method: str, ridge: float,
            residual_rows: list[list[int]] | None) -> list[dict]:
    """Correct every pruned block's proj and fc2 in place (`blocks` of the pruned model, cut
    by `plan`); return the per-layer report."""
    out = []
    for b, block in enumerate(blocks):
        rows = None if residual_rows is None else residual_rows[block.stage]
        d = block.attn.head_dim
        for name, layer, kind in measured_layers([block]):
            full = stats[name].weight.shape[1]
            # proj reads the heads' outputs laid out (H, d); fc2 reads the MLP channels
            kept = [h * d + i for h in plan.heads[b] for i in range(d)] if kind == "heads" else plan.mlp[b]
            if len(kept) == full:
                continue
            weight, bias, before, after = solve(stats[name], kept, rows, method, ridge, layer.bias is not None)
            layer.weight.copy_(weight.to(layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.copy_(bias.to(layer.bias.dtype))
            out.append({"name": name, "error_cut": before, "error_recovered": after, "kept": after < before})
    return out
