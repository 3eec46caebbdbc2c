"""Sequential one-shot recovery (`--recovery sequential`, docs/method.md section 8): every linear
layer of the pruned model that survives the cut (q/k/v, proj, fc1, fc2), in forward order, is
refitted by ridge least squares so that, on the *pruned* model's own inputs, it reproduces the
*dense* model's outputs of that layer at the same token positions.

Unlike `oneshot.refit`, which fits each layer to the dense model's inputs, a later layer here
sees what the corrected earlier layers really give it, so the error does not pile up block
after block (the block-sequential scheme of OBC/SparseGPT-style reconstruction, without labels).

For layer A = [W b] with pruned input x (a constant 1 appended) and dense target y:
    A' = C (P + lambda I)^-1,   P = sum x x^T,   C = sum y x^T,
lambda = `ridge` x the mean of diag(P) over the features (the constant is not damped), in float64. The mean squared error per token of any A'
is (tr(A' P A'^T) - 2 tr(A' C^T) + sum |y|^2) / tokens, so the refit is kept only when it is
lower than the layer's current error (the report lists the rest).

Written here rather than taken from a library: torch-pruning and timm have no reconstruction
step for pruned transformers, and the layer map comes from the family adapter.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..prune.calibration import layer_seed, sample_tokens


SEQUENTIAL_RIDGE = 0.1
"""The sequential refit's damping, relative to the mean diagonal of the layer's input Gram matrix."""


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer it watches has run."""


@dataclass
class _Layer:
    name: str
    dense: nn.Linear
    pruned: nn.Linear
    rows: list[int] | None
    """The dense layer's output rows that the pruned layer keeps (None: all of them)."""


def layer_pairs(dense_blocks, pruned_blocks, plan) -> list[_Layer]:
    """Every linear layer the pruned model keeps, paired with its dense twin, in forward order."""
    out = []
    for b, (dense, pruned) in enumerate(zip(dense_blocks, pruned_blocks)):
        residual = None if plan.residual is None else list(plan.residual[dense.stage])
        heads = list(plan.heads[b])
        if heads:
            pairs = list(zip(dense.attn.projection_rows(heads), pruned.attn.projections))
            for part, ((layer, rows), (twin, _)) in enumerate(pairs):
                suffix = "qkv" if len(pairs) == 1 else "qkv"[part]
                out.append(_Layer(f"{dense.name}.{suffix}", layer, twin, rows))
        out.append(_Layer(f"{dense.name}.proj", dense.attn.proj, pruned.attn.proj, residual))
        if len(plan.mlp[b]):
            out.append(_Layer(f"{dense.name}.fc1", dense.mlp.fc1, pruned.mlp.fc1, list(plan.mlp[b])))
        out.append(_Layer(f"{dense.name}.fc2", dense.mlp.fc2, pruned.mlp.fc2, residual))
    return out


@torch.no_grad()
def dense_targets(dense: nn.Module, layers: list[_Layer], images: torch.Tensor, batch_size: int,
                  per_image: int, seed: int) -> list[list[torch.Tensor]]:
    """For each layer and each batch, the dense model's outputs (kept rows) at the sampled tokens;
    one pass of the dense model."""
    streams = [torch.Generator().manual_seed(layer_seed(seed, i)) for i in range(len(layers))]
    targets: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = []
    current = {"images": 0}

    def hook(i):
        def record(module, args, output):
            rows = layers[i].rows
            targets[i].append(sample_tokens(output if rows is None else output[..., rows], current["images"],
                                            streams[i], per_image))
        return record

    for i, layer in enumerate(layers):
        handles.append(layer.dense.register_forward_hook(hook(i)))
    try:
        dense.eval()
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            current["images"] = len(batch)
            dense(batch)
    finally:
        for h in handles:
            h.remove()
    return targets


class _Normal:
    """The normal equations of one layer's refit, accumulated batch by batch."""

    def __init__(self, layer: _Layer, targets: list[torch.Tensor], generator: torch.Generator, per_image: int):
        self.layer, self.targets, self.generator, self.per_image = layer, targets, generator, per_image
        self.bias = layer.pruned.bias is not None
        k = layer.pruned.in_features + (1 if self.bias else 0)
        self.p = torch.zeros(k, k, dtype=torch.float64)
        self.c = torch.zeros(layer.pruned.out_features, k, dtype=torch.float64)
        self.y2, self.tokens = 0.0, 0

    def add(self, x: torch.Tensor, images: int, batch: int) -> None:
        x = sample_tokens(x, images, self.generator, self.per_image).to(torch.float64)
        if self.bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        y = self.targets[batch].to(torch.float64)
        self.p += x.T @ x
        self.c += y.T @ x
        self.y2 += float((y * y).sum())
        self.tokens += len(x)

    def error(self, a: torch.Tensor) -> float:
        """Mean squared error per token of weights `a` ([W b]) against the targets."""
        return (float(torch.einsum("oi,ij,oj->", a, self.p, a)) - 2 * float((a * self.c).sum()) + self.y2) / max(
            self.tokens, 1)

    @torch.no_grad()
    def solve(self, ridge: float) -> dict:
        """Write the ridge solution into the layer if it lowers the error; return the report row."""
        layer = self.layer.pruned
        a = layer.weight.detach().to(torch.float64)
        if self.bias:
            a = torch.cat([a, layer.bias.detach().to(torch.float64)[:, None]], 1)
        # the damping spares the constant input: a penalised bias would shrink toward zero
        features = layer.in_features
        damp = torch.zeros(len(self.p), dtype=torch.float64)
        if features:
            damp[:features] = ridge * float(torch.diagonal(self.p)[:features].mean())
        new = torch.linalg.solve(self.p + torch.diag(damp), self.c.T).T if len(self.p) else a
        before, after = self.error(a), self.error(new)
        kept = after < before  # NaN counts as worse
        if kept:
            layer.weight.copy_(new[:, :layer.in_features].to(layer.weight.dtype))
            if self.bias:
                layer.bias.copy_(new[:, layer.in_features].to(layer.bias.dtype))
        return {"name": self.layer.name, "error_cut": before, "error_recovered": after if kept else before,
                "kept": kept}


@torch.no_grad()
def refit_group(pruned: nn.Module, layers: list[_Layer], first: int, targets: list[list[torch.Tensor]],
                images: torch.Tensor, batch_size: int, per_image: int, seed: int, ridge: float) -> list[dict]:
    """Refit `layers` (indices `first`.. of the model's list, in forward order) on the pruned model's
    inputs of one pass, which stops after the last of them; return their report rows."""
    normals = [_Normal(layer, targets[first + i], torch.Generator().manual_seed(layer_seed(seed, first + i)),
                       per_image) for i, layer in enumerate(layers)]
    current = {"images": 0, "batch": 0}

    def hook(normal, last):
        def record(module, args):
            normal.add(args[0], current["images"], current["batch"])
            if last:
                raise _Stop
        return record

    handles = [n.layer.pruned.register_forward_pre_hook(hook(n, i == len(normals) - 1)) for i, n in enumerate(normals)]
    try:
        for n, start in enumerate(range(0, len(images), batch_size)):
            batch = images[start:start + batch_size]
            current.update(images=len(batch), batch=n)
            try:
                pruned(batch)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return [normal.solve(ridge) for normal in normals]


def recover_sequential(dense: nn.Module, pruned: nn.Module, dense_blocks, pruned_blocks, plan,
                       images: torch.Tensor, ridge: float, *, seed: int = 0, batch_size: int = 32,
                       per_image: int = 64, kinds: tuple[str, ...] = ("qkv", "q", "k", "v", "proj", "fc1", "fc2"),
                       progress=None) -> list[dict]:
    """Refit the pruned model in place, layer by layer in forward order (module docstring); return
    the per-layer report. `dense` is the unpruned model the plan was cut from, `images` the
    calibration images; `kinds` the layers refitted. Costs one dense pass and, per layer, a
    pruned pass up to that layer. (Refitting a block's four layers on the inputs of one pass
    instead cost 19 points of top-1 on reference-cifar10: docs/decisions.md.)"""
    layers = [layer for layer in layer_pairs(dense_blocks, pruned_blocks, plan)
              if layer.name.rsplit(".", 1)[1] in kinds]
    targets = dense_targets(dense, layers, images, batch_size, per_image, seed)
    pruned.eval()
    rows = []
    for i, layer in enumerate(layers):
        rows += refit_group(pruned, [layer], i, targets, images, batch_size, per_image, seed, ridge)
        targets[i] = []
        if progress is not None:
            progress(i + 1, len(layers))
    return rows
