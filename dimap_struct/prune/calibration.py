"""Calibration statistics of the unpruned model, shared by the criterion `dimap-calib`
(`criteria/calibrated.py`) and one-shot recovery (`recover/oneshot.py`), which the pipeline
computes once per run (docs/method.md section 8).

One pass of the *unpruned* model over N calibration images accumulates, for every block's
`proj` and `fc2` (`measured_layers`), the Gram matrix G = sum x x^T of its input x (with a
constant 1 appended), in float64, from at most `tokens_per_image` token positions per image:
statistics, never the activations themselves. The layer's output is y = A x with A = [W b],
so the output error of any replacement A' that reads some of its inputs is exact on the
calibration set given G (`calibration_error`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import build_dataset
from ..errors import UserError

RIDGE = 1e-3
"""The refit's damping, relative to the mean diagonal of the kept inputs' Gram matrix (recovery
refits with it; `dimap-calib` scores the refit it will make)."""


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


def measured_layers(blocks) -> list[tuple[str, nn.Linear, str]]:
    """(name, layer, kind) of every layer the statistics cover, the ones recovery corrects: each
    block's proj ('heads') and fc2 ('mlp')."""
    out = []
    for block in blocks:
        out.append((f"{block.name}.proj", block.attn.proj, "heads"))
        out.append((f"{block.name}.fc2", block.mlp.fc2, "mlp"))
    return out


@torch.no_grad()
def collect_stats(model: nn.Module, blocks, images: torch.Tensor, *, batch_size: int = 8,
                  tokens_per_image: int = 64, seed: int = 0, chunk_rows: int = 2048) -> dict[str, LayerStats]:
    """Run the unpruned `model` over `images` (N, C, H, W) and return the input statistics of
    every layer `measured_layers` names (see the module docstring).

    Each image contributes `tokens_per_image` of its token positions to each layer (all of
    them if it has fewer), drawn from that layer's own seeded stream image by image, so the
    statistics do not depend on `batch_size`. A layer's input must keep the images in the
    leading dimension, image-major (windows of one image together), as batched models do.
    `batch_size` 8: fastest of 8/16/32/64 for swin_t at 224 on a 2-core CPU."""
    layers = measured_layers(blocks)
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
            pending[name].append(sample_tokens(args[0], current["images"], streams[name], tokens_per_image))
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


def sample_tokens(x: torch.Tensor, images: int, generator: torch.Generator, per_image: int) -> torch.Tensor:
    """(tokens, F) rows of a layer's input `x` (images first, image-major: (images * windows, T, F)
    or (images, T, F); F may be 0), on the CPU: `per_image` token positions of each image drawn
    from `generator`, or every position when an image has no more. Always a copy: the model may
    still change its input in place."""
    x = x.detach().reshape(images, x.shape[:-1].numel() // images, x.shape[-1])
    if x.shape[1] > per_image:
        pick = torch.rand(x.shape[:2], generator=generator, dtype=torch.float32).argsort(dim=1)[:, :per_image]
        x = torch.gather(x, 1, pick[..., None].to(x.device).expand(-1, -1, x.shape[-1]))
    else:
        x = x.clone()
    return x.reshape(x.shape[0] * x.shape[1], x.shape[-1]).cpu()


def calibration_error(a_new: torch.Tensor, a: torch.Tensor, gram: torch.Tensor, tokens: int) -> float:
    """Mean squared output difference per token between weights `a_new` and `a` ([W b], the
    constant input last) on inputs whose Gram matrix is `gram`."""
    diff = a_new - a
    return float(torch.einsum("oi,ij,oj->", diff, gram, diff)) / max(tokens, 1)


def layer_seed(seed: int, index: int) -> int:
    """The seed of layer `index`'s token stream: numpy's SeedSequence mixes (seed, index) into
    independent streams for any seed up to 2**63 - 1 (arithmetic on the seed overflowed)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def calibration_images(data: str, data_config: dict, count: int, seed: int = 0, *,
                       dataset=None) -> torch.Tensor:
    """`count` images of the "train" split of `data` (a seeded random choice), preprocessed for
    the model; UserError if the data holds fewer. `dataset`: that split, if already built."""
    dataset = dataset if dataset is not None else build_dataset(data, "train", data_config, labels_required=False)
    if count > len(dataset):
        raise UserError(f"--calib-images {count}: the calibration data has only {len(dataset)} images in its "
                        "train split")
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    batch = dataset[pick] if hasattr(dataset, "batch") else None
    if batch is not None:
        return batch[0]
    return torch.stack([dataset[i][0] for i in pick])
