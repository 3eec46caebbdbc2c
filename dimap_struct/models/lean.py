"""The lean form: a module computing the same function as a Swin, for a leaner ONNX graph
(docs/method.md section 9).

A traced timm or torchvision Swin carries, per block, a cyclic shift (Slice + Concat on two
axes), padding, window partition and reverse (Reshape + Transpose), the shift undone, and
hundreds of Shape/Gather/Concat nodes of shape arithmetic. None of it depends on the input
except through the batch size. `LeanSwin` keeps each stage's tokens as (B, L, C) in the
*window order* of the stage's first block, so that its window attention is a plain reshape:

- a block with other windows (the shifted ones) gathers its attention branch's input into its
  own window order and scatters the branch's output back: two Gathers with constant
  permutations, and the residual stream never moves, so every residual add meets the next
  LayerNorm (fused by onnxruntime); the patch merging's 2x2 gather reads straight from the
  stage's order and writes the next stage's;
- LayerNorm, the MLP and the residual adds are per token, so the order does not matter to them,
  nor to the final mean over tokens;
- each block's relative-position bias and shift mask are one constant (windows, heads, N, N);
- every reshape has static sizes except the batch axis;
- dot-product attention's 1/sqrt(d) is folded into the query rows of qkv; cosine attention's
  clamped per-head temperature multiplies the normalised queries.

A family adapter describes its model as a `LeanSpec` (`FamilyAdapter.lean_spec`); this module
knows nothing of any family. No library builds this: onnxruntime's transformer optimizer fuses
LayerNorm, Gelu and SkipLayerNorm, but it leaves the window bookkeeping in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -100.0
"""What timm and torchvision add between tokens of different regions of a shifted window."""
MERGE_ORDER = ((0, 0), (1, 0), (0, 1), (1, 1))
"""Patch merging concatenates the 2x2 neighbours (row offset, column offset) in this order:
channel k*C + c of a merged token is channel c of neighbour MERGE_ORDER[k] (timm and
torchvision alike)."""


class LeanUnsupported(ValueError):
    """The model cannot be exported lean (e.g. a resolution not divisible by the window)."""


@dataclass
class LeanAttention:
    """One window attention, family-neutral. For H heads of width d and N tokens per window:
    `qkv_weight` (3*H*d, C) rows laid out (3, H, d) and `qkv_bias` (3*H*d,) as they act in the
    forward (a bias that the family zeroes or splits is given as applied); `scale` for
    dot-product attention (q * scale), or `temperature` (H,) for cosine attention (each head's
    normalised q.k times its entry); `bias` (H, N, N) the relative-position bias added to the
    logits; `proj` the output Linear H*d -> C."""

    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    heads: int
    bias: torch.Tensor
    proj: nn.Module
    scale: float | None = None
    temperature: torch.Tensor | None = None
    mask_scale: float = 1.0
    """How many times the family adds the shift mask (transformers' Swin v2 adds it twice)."""


def headless(proj: nn.Linear) -> LeanAttention:
    """An attention with every head removed: `LeanBlock` adds `proj`'s bias instead of a branch."""
    return LeanAttention(proj.weight.new_zeros(0, proj.out_features), None, 0,
                         proj.weight.new_zeros(0, 1, 1), proj, scale=1.0)


@dataclass
class LeanBlockSpec:
    """One block: pre-norm (x + attn(norm1(x)), x + mlp(norm2(x))) or, with `post_norm`,
    x + norm1(attn(x)), x + norm2(mlp(x)), then `norm3` if given. `window` and `shift` are the
    ones the block really uses at this resolution."""

    attention: LeanAttention
    norm1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    window: tuple[int, int]
    shift: tuple[int, int]
    post_norm: bool = False
    norm3: nn.Module | None = None


@dataclass
class LeanMergeSpec:
    """Patch merging: the 2x2 neighbours concatenated in MERGE_ORDER (4C channels), then
    `norm` and `reduction`, or `reduction` then `norm` when `norm_first` is False."""

    norm: nn.Module
    reduction: nn.Module
    norm_first: bool = True


@dataclass
class LeanStageSpec:
    merge: LeanMergeSpec | None
    blocks: list[LeanBlockSpec]


@dataclass
class LeanSpec:
    """A whole model: `stem` maps images (B, 3, H0, W0) to tokens (B, H, W, C) on `grid`
    (H, W); then the stages; `final_norm` per token; the mean over tokens; `classifier`
    maps (B, C) to logits."""

    stem: nn.Module
    grid: tuple[int, int]
    stages: list[LeanStageSpec]
    final_norm: nn.Module
    classifier: nn.Module


def window_order(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """(L,) int64: position j of the window order holds row-major spatial token order[j]:
    windows row-major over the map rolled by -shift (as torch.roll), tokens row-major in each."""
    (h, w), (wh, ww), (sh, sw) = grid, window, shift
    rows = (torch.arange(h) + sh) % h
    cols = (torch.arange(w) + sw) % w
    spatial = rows[:, None] * w + cols[None, :]
    return spatial.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(-1)


def shift_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """(windows, N, N): MASK_VALUE between tokens of one window that come from different regions
    of the rolled map (the three bands per axis that timm and torchvision label), else 0."""
    (h, w), (wh, ww), (sh, sw) = grid, window, shift
    labels = torch.zeros(h, w)
    count = 0
    for rows in ((0, h - wh), (h - wh, h - sh), (h - sh, h)):
        for cols in ((0, w - ww), (w - ww, w - sw), (w - sw, w)):
            labels[rows[0]:rows[1], cols[0]:cols[1]] = count
            count += 1
    labels = labels.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    differ = labels[:, None, :] != labels[:, :, None]
    return torch.where(differ, MASK_VALUE, 0.0)


class LeanWindowAttention(nn.Module):
    """Window attention on tokens already in window order: (B, W*N, C) -> (B, W*N, C')."""

    def __init__(self, spec: LeanAttention, grid: tuple[int, int], window: tuple[int, int],
                 shift: tuple[int, int]):
        super().__init__()
        heads, out = spec.heads, spec.qkv_weight.shape[0]
        self.heads, self.head_dim = heads, out // (3 * heads)
        self.tokens = window[0] * window[1]
        self.windows = (grid[0] // window[0]) * (grid[1] // window[1])
        weight = spec.qkv_weight.detach().clone()
        bias = spec.qkv_bias.detach().clone() if spec.qkv_bias is not None else None
        if spec.scale is not None:
            weight[:heads * self.head_dim] *= spec.scale
            if bias is not None:
                bias[:heads * self.head_dim] *= spec.scale
        self.qkv = nn.Linear(weight.shape[1], out, bias=bias is not None)
        self.qkv.weight.data.copy_(weight)
        if bias is not None:
            self.qkv.bias.data.copy_(bias)
        self.cosine = spec.temperature is not None
        if self.cosine:
            self.register_buffer("temperature", spec.temperature.detach().reshape(1, heads, 1, 1).clone())
        logits_bias = spec.bias.detach().reshape(1, heads, self.tokens, self.tokens)
        if any(shift):
            logits_bias = logits_bias + spec.mask_scale * shift_mask(grid, window, shift)[:, None]
        self.shifted = any(shift)
        self.register_buffer("logits_bias", logits_bias.contiguous())
        self.proj = spec.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, d = self.tokens, self.heads, self.head_dim
        length = self.windows * n
        q, k, v = self.qkv(x).reshape(-1, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.cosine:
            q = F.normalize(q, dim=-1) * self.temperature
            k = F.normalize(k, dim=-1)
        attn = q @ k.transpose(-2, -1)
        if self.shifted:
            attn = (attn.reshape(-1, self.windows, h, n, n) + self.logits_bias).reshape(-1, h, n, n)
        else:
            attn = attn + self.logits_bias
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, length, h * d)
        return self.proj(out)


class LeanBlock(nn.Module):
    """A block on tokens (B, L, C) held in its stage's residual order. When its windows differ
    from that order, the attention branch alone gathers into them (`gather`) and back
    (`scatter`), so the residual add stays next to the following LayerNorm (onnxruntime fuses
    the pair into SkipLayerNormalization)."""

    def __init__(self, spec: LeanBlockSpec, grid: tuple[int, int], gather: torch.Tensor | None = None,
                 scatter: torch.Tensor | None = None):
        super().__init__()
        self.norm1, self.norm2, self.mlp = spec.norm1, spec.norm2, spec.mlp
        self.norm3 = spec.norm3 if spec.norm3 is not None else nn.Identity()
        self.post_norm = spec.post_norm
        # A branch with nothing kept (every head, or every MLP channel, removed) gives the same
        # vector for every token: its output bias, after norm1 / norm2 in a post-norm block. It
        # is folded into one constant add, so the graph has no LayerNorm, window gather, Softmax
        # or zero-width MatMul left for it.
        self.attn = None
        if spec.attention.heads == 0:
            self.register_buffer("attn_constant", self._constant(spec.attention.proj(
                spec.attention.proj.weight.new_zeros(1, 0)), spec.norm1))
        else:
            self.attn = LeanWindowAttention(spec.attention, grid, spec.window, spec.shift)
            self.gather = Permute(gather) if gather is not None else nn.Identity()
            self.scatter = Permute(scatter) if scatter is not None else nn.Identity()
        if hidden_width(spec.mlp) == 0:
            zeros = spec.attention.proj.weight.new_zeros(1, spec.attention.proj.out_features)
            self.register_buffer("mlp_constant", self._constant(spec.mlp(zeros), spec.norm2))
            self.mlp = None

    def _constant(self, output: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return (norm(output) if self.post_norm else output).detach().reshape(-1).clone()

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.scatter(self.attn(self.gather(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = x + (self.attn_constant if self.attn is None else self.norm1(self._attention(x)))
            return self.norm3(x + (self.mlp_constant if self.mlp is None else self.norm2(self.mlp(x))))
        x = x + (self.attn_constant if self.attn is None else self._attention(self.norm1(x)))
        return x + (self.mlp_constant if self.mlp is None else self.mlp(self.norm2(x)))


def hidden_width(mlp: nn.Module) -> int:
    """Hidden channels of a two-layer MLP: its first Linear's outputs."""
    return next(m for m in mlp.modules() if isinstance(m, nn.Linear)).out_features


class LeanMerge(nn.Module):
    """2x2 patch merging as one Gather: (B, L, C) in any order -> (B, L/4, C') in `order`."""

    def __init__(self, spec: LeanMergeSpec, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index)  # (L/4, 4)
        self.norm, self.reduction, self.norm_first = spec.norm, spec.reduction, spec.norm_first
        self.merged_width = spec.reduction.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.index].reshape(-1, self.index.shape[0], self.merged_width)
        return self.reduction(self.norm(x)) if self.norm_first else self.norm(self.reduction(x))


class ChannelsLast(nn.Module):
    """(B, C, H, W) -> (B, H, W, C), for stems that end channels-first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class Permute(nn.Module):
    """Reorder tokens (B, L, C) with a constant index (one Gather)."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


class LeanSwin(nn.Module):
    """The lean form of a model described by a `LeanSpec`: (B, 3, H0, W0) -> logits."""

    def __init__(self, spec: LeanSpec, input_size: tuple[int, int, int]):
        super().__init__()
        self.stem, self.final_norm, self.classifier = spec.stem, spec.final_norm, spec.classifier
        with torch.no_grad():
            tokens = spec.stem(torch.zeros(1, *input_size))
        if tuple(tokens.shape[1:3]) != tuple(spec.grid):
            raise LeanUnsupported(f"the stem gives a {tuple(tokens.shape[1:3])} token map, not {spec.grid}")
        self.grid, self.width = tuple(spec.grid), tokens.shape[3]
        layers: list[nn.Module] = []
        grid = spec.grid
        order = torch.arange(grid[0] * grid[1])  # the spatial token held at each position
        for s, stage in enumerate(spec.stages):
            if not stage.blocks:
                raise LeanUnsupported(f"stage {s} has no blocks")
            merged = grid
            if stage.merge is not None:
                if grid[0] % 2 or grid[1] % 2:
                    raise LeanUnsupported(f"token map {grid[0]}x{grid[1]} is odd: patch merging would pad")
                merged = (grid[0] // 2, grid[1] // 2)
            for block in stage.blocks:
                _check_windows(merged, block.window)
            # the stage's residual order: its first block's windows
            residual = window_order(merged, stage.blocks[0].window, stage.blocks[0].shift)
            if stage.merge is not None:
                layers.append(LeanMerge(stage.merge, _merge_index(order, grid, merged, residual)))
            elif not torch.equal(order, residual):
                layers.append(Permute(_transition(order, residual)))
            layers.extend(lean_blocks(stage.blocks, merged, residual))
            order, grid = residual, merged
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x.reshape(-1, self.grid[0] * self.grid[1], self.width)
        x = self.final_norm(self.layers(x))
        return self.classifier(x.mean(dim=1))


def lean_blocks(blocks: list[LeanBlockSpec], grid: tuple[int, int], residual: torch.Tensor) -> list[LeanBlock]:
    """The blocks of one stage on a `grid` token map held in `residual` order, each gathering its
    attention branch's input into its own windows where they differ."""
    layers = []
    for block in blocks:
        target = window_order(grid, block.window, block.shift)
        same = torch.equal(target, residual)
        layers.append(LeanBlock(block, grid, None if same else _transition(residual, target),
                                None if same else _transition(target, residual)))
    return layers


def _check_windows(grid: tuple[int, int], window: tuple[int, int]) -> None:
    if grid[0] % window[0] or grid[1] % window[1]:
        raise LeanUnsupported(f"token map {grid[0]}x{grid[1]} is not a multiple of the window "
                              f"{window[0]}x{window[1]}: the model pads")


def _transition(order: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Index that turns tokens held in `order` into tokens held in `target`."""
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order))
    return where[target]


def _merge_index(order: torch.Tensor, grid: tuple[int, int], merged: tuple[int, int],
                 target: torch.Tensor) -> torch.Tensor:
    """(L/4, 4): for each merged token in `target` order, the positions (in `order`) of its 2x2
    neighbours on `grid`, in MERGE_ORDER."""
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order))
    rows, cols = target // merged[1], target % merged[1]
    spatial = torch.stack([(2 * rows + dr) * grid[1] + 2 * cols + dc for dr, dc in MERGE_ORDER], dim=1)
    return where[spatial]


def lean_model(model: nn.Module, adapter, input_size) -> LeanSwin:
    """The lean form of `model` (in eval mode) for images of `input_size` (C, H, W). Raises
    LeanUnsupported when the family has no lean description or this size does not allow one."""
    if model.training:
        raise ValueError("lean_model needs a model in eval mode")
    with torch.no_grad():
        spec = adapter.lean_spec(tuple(input_size))
        return LeanSwin(spec, tuple(input_size)).eval()
