"""Adapter for timm's Swin v2 "CR" reimplementation (`timm.models.swin_transformer_v2_cr`,
`swinv2_cr_*`).

Layout (timm 1.0): `model.stages[s]` is a `SwinTransformerV2CrStage` whose `downsample` (a
`PatchMerging`, Identity in stage 0) runs before its `blocks`; some blocks end in an extra
`norm3` (the `_ns` variants). Blocks are post-norm. Each block's `attn` (a
`WindowMultiHeadAttention`, cosine attention) holds, for H heads of width d:

- `qkv`: Linear C -> 3*H*d with bias, rows laid out (3, H, d);
- `logit_scale` (H,): the per-head temperature;
- `meta_mlp`: a timm `Mlp` 2 -> 384 -> H (ReLU, both layers biased), the position bias, whose
  `fc2` has one output row and one bias entry per head;
- `proj`: Linear H*d -> C.

timm's forward splits qkv into heads of width C // H (C the input width), which is wrong
once heads are cut, so the adapter turns every attention into `PrunableWindowMultiHeadAttention`:
same parameters and state-dict keys, same computation, head width inferred from qkv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import swin_transformer_v2_cr as timm_cr
from torch import nn

from ..lean import LeanAttention
from .base import MAX_LOGIT_SCALE, AttentionSite, PerHeadTensor, head_width, register_adapter
from .timm_common import TimmSwinFamilyAdapter


class PrunableWindowMultiHeadAttention(timm_cr.WindowMultiHeadAttention):
    """timm's Swin v2 CR window attention for any head count (forward only differs)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        windows, n, _ = x.shape
        qkv = self.qkv(x).view(windows, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scale = torch.clamp(self.logit_scale.reshape(1, self.num_heads, 1, 1), max=MAX_LOGIT_SCALE).exp()
        attn = attn * scale
        attn = attn + self._relative_positional_encodings()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(windows // num_win, num_win, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(windows, n, -1)
        return self.proj_drop(self.proj(x))


@register_adapter
class TimmSwinV2CrAdapter(TimmSwinFamilyAdapter):
    """Cosine attention: no 1/sqrt(d) scale; the per-head temperatures are cut with the heads."""

    family = "timm Swin v2 CR (swin_transformer_v2_cr: swinv2_cr_*)"
    timm_module = timm_cr
    model_class = timm_cr.SwinTransformerV2Cr
    stages_attr = "stages"
    prunable_attention = {timm_cr.WindowMultiHeadAttention: PrunableWindowMultiHeadAttention}
    post_norm = True

    def attention_site(self, attn: nn.Module) -> AttentionSite:
        return AttentionSite(
            module=attn, qkv=attn.qkv, proj=attn.proj, num_heads=attn.num_heads,
            head_dim=head_width(attn, attn.qkv.out_features // 3, attn.num_heads),
            window_area=attn.window_size[0] * attn.window_size[1],
            per_head=[PerHeadTensor(attn, "logit_scale", axis=0)], per_head_layers=[attn.meta_mlp.fc2],
        )

    def lean_attention(self, attn: nn.Module):
        n = attn.window_size[0] * attn.window_size[1]
        position = attn._relative_positional_encodings().reshape(attn.num_heads, n, n)
        return LeanAttention(attn.qkv.weight, attn.qkv.bias, attn.num_heads, position, attn.proj,
                             temperature=torch.clamp(attn.logit_scale.reshape(-1), max=MAX_LOGIT_SCALE).exp())
