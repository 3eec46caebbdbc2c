"""Adapter for torchvision's Swin Transformers v1 and v2 (`torchvision.models.swin_transformer`:
`swin_t`, `swin_s`, `swin_b`, `swin_v2_t`, `swin_v2_s`, `swin_v2_b`), named 'torchvision:NAME'.

Layout (torchvision 0.19+): `model.features` is a Sequential: [0] patch embedding (Conv2d,
Permute, LayerNorm), then for stage s the blocks at [2s+1], preceded for s >= 1 by a
`PatchMerging` (v1: norm then reduction) or `PatchMergingV2` (reduction then norm) at [2s].
A block has `attn` and `mlp` (torchvision's `MLP`: [0] Linear C -> m, GELU, Dropout, [3]
Linear m -> C). For H heads of width d the attention holds:

- `qkv`: Linear C -> 3*H*d with bias, rows laid out (3, H, d); v2 ignores the key third of
  the bias (zeroed in every forward);
- `proj`: Linear H*d -> C;
- v1 (`ShiftedWindowAttention`): `relative_position_bias_table` ((2Wh-1)(2Ww-1), H), scale
  1/sqrt(C // H);
- v2 (`ShiftedWindowAttentionV2`): `logit_scale` (H, 1, 1) and `cpb_mlp` Linear(2, 512) ->
  ReLU -> Linear(512, H, no bias), whose last layer has one output row per head.

torchvision's functional attention splits heads with width C // H and reshapes the attention
output to C, and it applies qkv / proj through `F.linear` (invisible to forward hooks). The
adapter therefore gives every attention module the class `PrunableShiftedWindowAttention(V2)`:
same parameters and state-dict keys, same computation, with the head width read from qkv
(3*H*d rows, whatever the head count) and the projections called as modules.
"""
from __future__ import annotations

import re
import sys
from contextlib import redirect_stdout

import torch
import torchvision
import torch.nn.functional as F
from torch import nn
from torchvision.models import get_model_weights
from torchvision.models import swin_transformer as tv_swin

from ..lean import LeanAttention, LeanBlockSpec, LeanMergeSpec, LeanSpec, LeanStageSpec, LeanUnsupported, headless
from .base import (MAX_LOGIT_SCALE, AttentionSite, BlockSite, FamilyAdapter, MlpSite, PerHeadTensor, fetch_error,
                   head_width, is_headless, parameters_named, register_adapter)

PREFIX = "torchvision:"
NAMES = ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b")
_VARIANTS = {  # (v2, embed dim, blocks per stage) -> builder, to find the preprocessing
    (False, 96, (2, 2, 6, 2)): "swin_t", (False, 96, (2, 2, 18, 2)): "swin_s",
    (False, 128, (2, 2, 18, 2)): "swin_b", (True, 96, (2, 2, 6, 2)): "swin_v2_t",
    (True, 96, (2, 2, 18, 2)): "swin_v2_s", (True, 128, (2, 2, 18, 2)): "swin_v2_b",
}
_FEATURE = re.compile(r"^features\.(\d+)(\.|$)")


class _HeadCountForward:
    """torchvision's shifted window attention for any head count."""

    @property
    def head_dim(self) -> int:
        # torchvision's width C // H at conversion; qkv keeps 3*H*d rows as heads are cut
        return head_width(self, self.qkv.out_features // 3, self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - width % ww) % ww, 0, (wh - height % wh) % wh))
        _, ph, pw, _ = x.shape
        # no shift when one window covers the (padded) map
        sh = 0 if wh >= ph else self.shift_size[0]
        sw = 0 if ww >= pw else self.shift_size[1]
        shifted = sh + sw > 0
        if shifted:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        num_windows = (ph // wh) * (pw // ww)
        x = x.view(batch, ph // wh, wh, pw // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch * num_windows, wh * ww, channels)
        n = wh * ww

        cosine = hasattr(self, "logit_scale")
        qkv = self.qkv(x)
        if cosine and self.qkv.bias is not None:
            third = self.qkv.bias.numel() // 3
            # torchvision v2 ignores the key third of the bias: take it back out (exact while it
            # is zero, as torchvision initialises it; its gradient cancels, so it stays zero)
            qkv = qkv - F.pad(self.qkv.bias[third:2 * third], (third, third))
        q, k, v = qkv.reshape(x.size(0), n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cosine:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            attn = attn * torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()
        else:
            attn = (q * self.head_dim ** -0.5).matmul(k.transpose(-2, -1))
        attn = attn + self.get_relative_position_bias()
        if shifted:
            attn = attn.view(x.size(0) // num_windows, num_windows, self.num_heads, n, n)
            attn = attn + _shift_mask(x, ph, pw, (wh, ww), (sh, sw)).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), n, -1)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)

        x = x.view(batch, ph // wh, pw // ww, wh, ww, channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch, ph, pw, channels)
        if shifted:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


def _shift_mask(x: torch.Tensor, ph: int, pw: int, window, shift) -> torch.Tensor:
    """(windows, n, n) additive mask: -100 between tokens from different regions of the
    cyclically shifted map, as torchvision builds it."""
    (wh, ww), (sh, sw) = window, shift
    regions = x.new_zeros((ph, pw))
    count = 0
    for rows in ((0, -wh), (-wh, -sh), (-sh, None)):
        for cols in ((0, -ww), (-ww, -sw), (-sw, None)):
            regions[rows[0]:rows[1], cols[0]:cols[1]] = count
            count += 1
    regions = regions.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    mask = regions.unsqueeze(1) - regions.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class PrunableShiftedWindowAttention(_HeadCountForward, tv_swin.ShiftedWindowAttention):
    """torchvision Swin v1 attention for any head count (forward only differs)."""


class PrunableShiftedWindowAttentionV2(_HeadCountForward, tv_swin.ShiftedWindowAttentionV2):
    """torchvision Swin v2 attention for any head count (forward only differs)."""


@register_adapter
class TorchvisionSwinAdapter(FamilyAdapter):
    """The v1 scale 1/sqrt(d) comes from the head width, which cutting heads leaves alone."""

    family = "torchvision Swin v1 / v2 (torchvision:swin_t/s/b, torchvision:swin_v2_t/s/b)"
    prunable_attention = {tv_swin.ShiftedWindowAttention: PrunableShiftedWindowAttention,
                          tv_swin.ShiftedWindowAttentionV2: PrunableShiftedWindowAttentionV2}
    block_key = r"^features\.(\d+)\.(\d+)\.norm1\.weight$"
    width_key = "features.0.0.weight"

    def no_weight_decay(self) -> set[str]:
        # torchvision's Swin has no no_weight_decay(); these are the tensors timm's Swins name
        return parameters_named(self.model, ("relative_position_bias_table", "logit_scale", "cpb_mlp"))

    @classmethod
    def resolve_name(cls, name: str) -> str | None:
        return name if name.startswith(PREFIX) and name[len(PREFIX):] in NAMES else None

    @classmethod
    def known_names(cls) -> list[str]:
        return [PREFIX + n for n in NAMES]

    @classmethod
    def foreign_name(cls, name: str) -> bool:
        # torchvision's classifiers outside its Swin family, e.g. torchvision:resnet18
        return name.startswith(PREFIX) and name[len(PREFIX):] in torchvision.models.list_models(
            module=torchvision.models)

    @classmethod
    def build(cls, name: str, *, pretrained: bool, **model_kwargs) -> nn.Module:
        """torchvision's builder; pretrained means its DEFAULT weights (torch hub cache or download)."""
        base = name[len(PREFIX):]
        if not pretrained:
            return torchvision.models.get_model(base, weights=None, **model_kwargs)
        try:
            with redirect_stdout(sys.stderr):  # torch.hub announces downloads on stdout, which --json owns
                return torchvision.models.get_model(base, weights="DEFAULT", **model_kwargs)
        except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
            raise fetch_error(name, err) from err

    @classmethod
    def weights_description(cls, model: nn.Module, name: str) -> str:
        return f"pretrained ({get_model_weights(name[len(PREFIX):]).DEFAULT}, via torchvision)"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, tv_swin.SwinTransformer)

    @property
    def num_classes(self) -> int:
        return self.model.head.out_features

    def _stages(self) -> list[nn.Sequential]:
        return list(self.model.features)[1::2]

    def blocks(self) -> list[BlockSite]:
        sites = []
        for s, stage in enumerate(self._stages()):
            for b, block in enumerate(stage):
                attn = block.attn
                v2 = hasattr(attn, "logit_scale")
                per_head = [PerHeadTensor(attn, "logit_scale", axis=0)] if v2 else \
                    [PerHeadTensor(attn, "relative_position_bias_table", axis=1)]
                sites.append(BlockSite(
                    name=f"features.{2 * s + 1}.{b}",
                    stage=s,
                    attn=AttentionSite(
                        module=attn, qkv=attn.qkv, proj=attn.proj, num_heads=attn.num_heads,
                        head_dim=attn.head_dim, window_area=attn.window_size[0] * attn.window_size[1],
                        per_head=per_head, per_head_layers=[attn.cpb_mlp[-1]] if v2 else [],
                    ),
                    mlp=MlpSite(fc1=block.mlp[0], fc2=block.mlp[3]),
                ))
        return sites

    def stage_of(self, module_name: str) -> int | None:
        # features.0 (patch embedding) and .1 are stage 0; .2s (merging) and .2s+1 are stage s
        match = _FEATURE.match(module_name)
        return int(match.group(1)) // 2 if match else None

    def variant(self) -> str | None:
        """The torchvision builder this model matches (None for a custom configuration)."""
        first = self._stages()[0][0].attn
        key = (isinstance(first, tv_swin.ShiftedWindowAttentionV2), self.model.features[0][0].out_channels,
               tuple(len(stage) for stage in self._stages()))
        return _VARIANTS.get(key)

    def data_config(self) -> dict:
        """torchvision's preprocessing of the matching pretrained weights (224 for v1, 256 for
        v2), in timm's format; for custom configurations 32 x window, crop 0.875."""
        name = self.variant()
        if name is not None:
            preset = get_model_weights(name).DEFAULT.transforms()
            crop, resize = preset.crop_size[0], preset.resize_size[0]
            return {"input_size": (3, crop, crop), "interpolation": preset.interpolation.value,
                    "mean": tuple(preset.mean), "std": tuple(preset.std), "crop_pct": crop / resize,
                    "crop_mode": "center"}
        side = 32 * self._stages()[0][0].attn.window_size[0]
        return {"input_size": (3, side, side), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
                "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}

    def build_kwargs(self) -> dict:
        return {"num_classes": self.model.head.out_features}

    def lean_spec(self, input_size: tuple[int, int, int]):
        m = self.model
        stride = m.features[0][0].stride
        grid = first = (input_size[1] // stride[0], input_size[2] // stride[1])
        stages = []
        for s, stage in enumerate(self._stages()):
            merge = None
            if s > 0:
                merging = m.features[2 * s]
                merge = LeanMergeSpec(merging.norm, merging.reduction,
                                      norm_first=not isinstance(merging, tv_swin.PatchMergingV2))
                grid = (grid[0] // 2, grid[1] // 2)
            blocks = []
            for block in stage:
                attn = block.attn
                (wh, ww), (sh, sw) = attn.window_size, attn.shift_size
                if grid[0] % wh or grid[1] % ww:
                    raise LeanUnsupported(f"token map {grid[0]}x{grid[1]} is not a multiple of the window "
                                          f"{wh}x{ww}: the model pads")
                # torchvision drops the shift along an axis that one window covers
                shift = (0 if wh >= grid[0] else sh, 0 if ww >= grid[1] else sw)
                blocks.append(LeanBlockSpec(self._lean_attention(attn), block.norm1, block.norm2, block.mlp,
                                            (wh, ww), shift, isinstance(block, tv_swin.SwinTransformerBlockV2)))
            stages.append(LeanStageSpec(merge, blocks))
        return LeanSpec(m.features[0], first, stages, m.norm, m.head)

    @staticmethod
    def _lean_attention(attn: nn.Module):
        if is_headless(attn):
            return headless(attn.proj)
        position = attn.get_relative_position_bias()[0]
        if not hasattr(attn, "logit_scale"):
            return LeanAttention(attn.qkv.weight, attn.qkv.bias, attn.num_heads, position, attn.proj,
                                 scale=attn.head_dim ** -0.5)
        bias = attn.qkv.bias
        if bias is not None:  # v2 ignores the key third (see _HeadCountForward)
            third = bias.numel() // 3
            bias = torch.cat((bias[:third], torch.zeros_like(bias[third:2 * third]), bias[2 * third:]))
        return LeanAttention(attn.qkv.weight, bias, attn.num_heads, position, attn.proj,
                             temperature=torch.clamp(attn.logit_scale, max=MAX_LOGIT_SCALE).exp().flatten())
