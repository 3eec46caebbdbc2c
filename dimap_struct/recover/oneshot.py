"""Stage 7, one-shot recovery from calibration images (no training): after the cut, the layers
that read the removed groups (`proj` for heads, `fc2` for MLP channels) are corrected so that
they reproduce the unpruned layer's output on calibration activations (docs/method.md
section 8).

One pass of the *unpruned* model over N calibration images accumulates, for every block's
`proj` and `fc2`, the Gram matrix G = sum x x^T of its input x (with a constant 1 appended),
in float64, from at most `tokens_per_image` token positions per image: statistics, never the
activations themselves. The layer's output is y = A x with A = [W b], so everything below is
exact on the calibration set given G:

- bias compensation: the kept columns stay, and b' = b + W_R mean(x_R) takes the mean
  contribution of the removed inputs R;
- refit (ridge least squares): A'_K = A G[:, K] (G[K, K] + lambda I)^-1 over the kept inputs
  K (the constant included), lambda = `ridge` x the mean of diag(G[K, K]), solved in float64.

The calibration error of a choice A' is tr((A' - A) G (A' - A)^T) / tokens; a layer whose
recovery would raise it above the plain cut's is left as cut (a degenerate refit) and the
report says so.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError

METHODS = ("refit", "bias", "none")
RIDGE = 1e-3
"""The refit's damping, relative to the mean diagonal of the kept inputs' Gram matrix."""


@dataclass
class LayerStats:
    """Calibration statistics of one layer's input, and the layer's unpruned weights."""

    gram: torch.Tensor
    """float64 (F + 1, F + 1): sum of x x^T over tokens, x with a trailing constant 1."""
    tokens: int
    weight: torch.Tensor
    """float64 (out, F), the unpruned weight."""
    bias: torch.Tensor
    """float64 (out,), zeros if the layer has none."""


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


def recovered_layers(blocks) -> list[tuple[str, nn.Linear, str]]:
    """(name, layer, kind) of every layer recovery corrects: each block's proj ('heads') and
    fc2 ('mlp')."""
    out = []
    for block in blocks:
        out.append((f"{block.name}.proj", block.attn.proj, "heads"))
        out.append((f"{block.name}.fc2", block.mlp.fc2, "mlp"))
    return out


@torch.no_grad()
def collect_stats(model: nn.Module, blocks, images: torch.Tensor, *, batch_size: int = 8,
                  tokens_per_image: int = 64, seed: int = 0, chunk_rows: int = 2048) -> dict[str, LayerStats]:
    """Run the unpruned `model` over `images` (N, C, H, W) and return the input statistics of
    every layer `recovered_layers` names (see the module docstring).

    Each image contributes `tokens_per_image` of its token positions to each layer (all of
    them if it has fewer), drawn from that layer's own seeded stream image by image, so the
    statistics do not depend on `batch_size`. A layer's input must keep the images in the
    leading dimension, image-major (windows of one image together), as batched models do.
    `batch_size` 8: fastest of 8/16/32/64 for swin_t at 224 on a 2-core CPU."""
    layers = recovered_layers(blocks)
    stats = {name: LayerStats(torch.zeros(layer.in_features + 1, layer.in_features + 1, dtype=torch.float64), 0,
                              layer.weight.detach().to(torch.float64).clone(),
                              (layer.bias.detach() if layer.bias is not None
                               else torch.zeros(layer.out_features)).to(torch.float64).clone())
             for name, layer, _ in layers}
    streams = {name: torch.Generator().manual_seed(layer_seed(seed, i)) for i, (name, _, _) in enumerate(layers)}
    pending: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in layers}
    current = {"images": 0}

    def flush(name):
        # one Gram product per `chunk_rows` sampled tokens rather than one per batch: with
        # batches of 8, per-batch float64 additions cost 0.18 s per 64 images of swin_t
        if not pending[name]:
            return
        x = torch.cat(pending[name])
        pending[name].clear()
        column = x.sum(0).to(torch.float64)
        gram = stats[name].gram  # G = [[X^T X, X^T 1], [1^T X, n]] without materialising [X 1]
        gram[:-1, :-1] += (x.T @ x).to(torch.float64)  # float32 products, float64 sums
        gram[:-1, -1] += column
        gram[-1, :-1] += column
        gram[-1, -1] += x.shape[0]
        stats[name].tokens += x.shape[0]

    def hook(name):
        def accumulate(module, args):
            x = args[0].detach()
            x = x.reshape(current["images"], -1, x.shape[-1])  # (images, tokens, F)
            if x.shape[1] > tokens_per_image:
                draws = torch.rand(x.shape[:2], generator=streams[name], dtype=torch.float32)
                pick = draws.argsort(dim=1)[:, :tokens_per_image].to(x.device)
                x = torch.gather(x, 1, pick[..., None].expand(-1, -1, x.shape[-1]))
            else:  # a copy: the model may still change its input in place
                x = x.clone()
            pending[name].append(x.reshape(-1, x.shape[-1]).cpu())
            if sum(len(piece) for piece in pending[name]) >= chunk_rows:
                flush(name)
        return accumulate

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer, _ in layers]
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            current["images"] = len(batch)
            model(batch)
        for name in pending:
            flush(name)
    finally:
        for h in handles:
            h.remove()
    return stats


def calibration_error(a_new: torch.Tensor, a: torch.Tensor, gram: torch.Tensor, tokens: int) -> float:
    """Mean squared output difference per token between weights `a_new` and `a` ([W b], the
    constant input last) on inputs whose Gram matrix is `gram`."""
    diff = a_new - a
    return float(torch.einsum("oi,ij,oj->", diff, gram, diff)) / max(tokens, 1)


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
        for name, layer, kind in recovered_layers([block]):
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


def layer_seed(seed: int, index: int) -> int:
    """The seed of layer `index`'s token stream: numpy's SeedSequence mixes (seed, index) into
    independent streams for any seed up to 2**63 - 1 (arithmetic on the seed overflowed)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def calibration_images(data: str, data_config: dict, count: int, seed: int = 0, *,
                       dataset=None) -> torch.Tensor:
    """`count` images of the "train" split of `data` (a seeded random choice), preprocessed for
    the model; UserError if the data holds fewer. `dataset`: that split, if already built."""
    from ..data import build_dataset

    dataset = dataset if dataset is not None else build_dataset(data, "train", data_config, labels_required=False)
    if count > len(dataset):
        raise UserError(f"--calib-images {count}: the calibration data has only {len(dataset)} images in its "
                        "train split")
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    batch = dataset[pick] if hasattr(dataset, "batch") else None
    if batch is not None:
        return batch[0]
    return torch.stack([dataset[i][0] for i in pick])


def data_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a data directory's file list and sizes (of the file, for a file). Folders that
    cannot be listed and entries that cannot be examined are skipped; paths are '/'-separated,
    in pathlib's order, part by part (the hash is the same as before on POSIX systems)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(f"{path.name}\0{path.stat().st_size}\n".encode())
        return digest.hexdigest()
    # os.scandir on plain strings: pathlib's rglob + stat took 1.6 s on CIFAR-10's 60,000 files
    files = []
    folders = [""]
    while folders:
        relative = folders.pop()
        try:
            entries = list(os.scandir(os.path.join(path, relative)))
        except OSError:  # unreadable (lost+found), or gone
            continue
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(name)
                elif entry.is_file():
                    files.append((name.split("/"), entry.stat().st_size))
            except OSError:  # a symlink loop, a file removed meanwhile
                continue
    for parts, size in sorted(files):
        digest.update(f"{'/'.join(parts)}\0{size}\n".encode())
    return digest.hexdigest()
