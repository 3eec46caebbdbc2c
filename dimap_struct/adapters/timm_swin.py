"""Adapter for timm's Swin Transformer v1 (`timm.models.swin_transformer`, incl. `swin_s3_*`).

Layout (timm 1.0): `model.layers[s]` is a `SwinTransformerStage` whose `downsample` (a
`PatchMerging`, or Identity in stage 0) runs *before* its `blocks`. Each
`SwinTransformerBlock` has `attn` (a `WindowAttention` with fused `qkv`, `proj` and a
`relative_position_bias_table` of shape ((2Wh-1)(2Ww-1), heads)) and `mlp` (`fc1`, `fc2`).
"""
from __future__ import annotations

import re

import timm
import torch
from timm.models import swin_transformer as timm_swin
from torch import nn

from .base import AttentionSite, BlockSite, FamilyAdapter, MlpSite, PerHeadTensor, ResidualSite, register_adapter

_STAGE = re.compile(r"^layers\.(\d+)\.")


@register_adapter
class TimmSwinV1Adapter(FamilyAdapter):
    family = "timm Swin v1 (swin_transformer: swin_tiny/small/base/large_*, swin_s3_*)"

    @classmethod
    def accepts_name(cls, timm_name: str) -> bool:
        return timm_name in timm.list_models(module="swin_transformer")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, timm_swin.SwinTransformer)

    def blocks(self) -> list[BlockSite]:
        sites = []
        for s, stage in enumerate(self.model.layers):
            for b, block in enumerate(stage.blocks):
                attn = block.attn
                heads = attn.num_heads
                sites.append(BlockSite(
                    name=f"layers.{s}.blocks.{b}",
                    stage=s,
                    attn=AttentionSite(
                        module=attn,
                        qkv=attn.qkv,
                        proj=attn.proj,
                        num_heads=heads,
                        head_dim=attn.qkv.out_features // (3 * heads),
                        window_area=attn.window_area,
                        per_head=[PerHeadTensor(attn, "relative_position_bias_table", axis=1)],
                    ),
                    mlp=MlpSite(fc1=block.mlp.fc1, fc2=block.mlp.fc2),
                ))
        return sites

    def stage_of(self, module_name: str) -> int | None:
        if module_name.startswith("patch_embed"):
            return 0
        match = _STAGE.match(module_name)
        return int(match.group(1)) if match else None

    def set_num_heads(self, site: AttentionSite, num_heads: int) -> None:
        # WindowAttention reshapes qkv with `self.num_heads` and infers head_dim (-1), and its
        # scale comes from the unchanged head_dim, so the attribute is all that needs updating.
        site.module.num_heads = num_heads

    def residual_sites(self) -> list[ResidualSite]:
        # Stage s's stream is written by the patch embedding (s = 0) or its own merging's
        # reduction, and read by the next stage's merging, which concatenates the 2x2
        # neighbours channel-last: input k*C + c (k < 4) is channel c (timm's reshape/permute).
        m = self.model
        sites = []
        for s, stage in enumerate(m.layers):
            first = [m.patch_embed.proj] if s == 0 else [stage.downsample.reduction]
            norms = [m.patch_embed.norm] if s == 0 and isinstance(m.patch_embed.norm, nn.LayerNorm) else []
            producers, consumers = list(first), []
            for block in stage.blocks:
                producers += [block.attn.proj, block.mlp.fc2]
                consumers += [block.attn.qkv, block.mlp.fc1]
                norms += [block.norm1, block.norm2]
            interleaved = []
            if s + 1 < len(m.layers):
                nxt = m.layers[s + 1].downsample
                interleaved = [(nxt.norm, 4), (nxt.reduction, 4)]
            else:
                norms.append(m.norm)
                consumers.append(m.head.fc)
            sites.append(ResidualSite(s, stage.blocks[0].attn.qkv.in_features, producers, consumers, norms,
                                      interleaved))
        return sites

    def set_residual_width(self, stage: int, width: int) -> None:
        m = self.model
        layer = m.layers[stage]
        layer.dim = width
        if hasattr(layer.downsample, "out_dim"):
            layer.downsample.out_dim = width
        if stage + 1 < len(m.layers):
            m.layers[stage + 1].downsample.dim = width
        for block in layer.blocks:
            block.dim = block.attn.dim = width
        if stage == len(m.layers) - 1:
            m.num_features = m.head_hidden_size = width
            m.head.in_features = width

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # timm's own converter understands the official Microsoft release layout
        # (downsample at the end of a stage, `attn_mask` / index buffers in the file).
        return timm_swin.checkpoint_filter_fn(state_dict, self.model)

    def build_kwargs(self) -> dict:
        return {"num_classes": self.model.num_classes}
