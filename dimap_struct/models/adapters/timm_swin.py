"""Adapter for timm's Swin Transformer v1 (`timm.models.swin_transformer`, incl. `swin_s3_*`).

Layout (timm 1.0): `model.layers[s]` is a `SwinTransformerStage` whose `downsample` (a
`PatchMerging`, or Identity in stage 0) runs *before* its `blocks`. Each
`SwinTransformerBlock` has `attn` (a `WindowAttention` with fused `qkv`, `proj` and a
`relative_position_bias_table` of shape ((2Wh-1)(2Ww-1), heads)) and `mlp` (`fc1`, `fc2`).
"""
from __future__ import annotations

from timm.models import swin_transformer as timm_swin
from torch import nn

from ..lean import LeanAttention
from .base import AttentionSite, PerHeadTensor, ResidualSite, head_width, register_adapter
from .timm_common import TimmSwinFamilyAdapter


@register_adapter
class TimmSwinV1Adapter(TimmSwinFamilyAdapter):
    """WindowAttention reshapes qkv with `self.num_heads` and infers the head width, and its
    scale comes from the unchanged head width: timm's own module runs with any head count."""

    family = "timm Swin v1 (swin_transformer: swin_tiny/small/base/large_*, swin_s3_*)"
    timm_module = timm_swin
    model_class = timm_swin.SwinTransformer
    aliases = {"swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
               "swin_b": "swin_base_patch4_window7_224", "swin_l": "swin_large_patch4_window7_224"}

    def attention_site(self, attn: nn.Module) -> AttentionSite:
        return AttentionSite(
            module=attn, qkv=attn.qkv, proj=attn.proj, num_heads=attn.num_heads,
            head_dim=head_width(attn, attn.qkv.out_features // 3, attn.num_heads), window_area=attn.window_area,
            per_head=[PerHeadTensor(attn, "relative_position_bias_table", axis=1)],
        )

    def lean_attention(self, attn: nn.Module):
        return LeanAttention(attn.qkv.weight, attn.qkv.bias, attn.num_heads, attn._get_rel_pos_bias()[0], attn.proj,
                             scale=attn.scale)

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
