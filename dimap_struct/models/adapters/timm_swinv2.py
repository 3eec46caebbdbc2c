"""Adapter for timm's Swin Transformer v2 (`timm.models.swin_transformer_v2`, `swinv2_*`).

Layout (timm 1.0): `model.layers[s]` is a `SwinTransformerV2Stage`; its `downsample` (a
`PatchMerging`, Identity in stage 0) runs before its `blocks`. Blocks are post-norm
(x + norm1(attn(x)), x + norm2(mlp(x))). Each block's `attn` (a `WindowAttention`, cosine
attention) holds, for H heads of width d:

- `qkv`: Linear C -> 3*H*d without bias, rows laid out (3, H, d);
- `q_bias`, `v_bias` (parameters) and `k_bias` (a zero buffer), each (H*d,), head-major;
- `logit_scale` (H, 1, 1): the per-head temperature of the cosine attention;
- `cpb_mlp`: Linear(2, 512) -> ReLU -> Linear(512, H, no bias), the continuous position bias,
  whose last layer has one output row per head;
- `proj`: Linear H*d -> C.

timm's forward cannot run with fewer heads (it reshapes the attention output to the input
width C) and applies `qkv` through `F.linear`, invisible to forward hooks. The adapter
therefore turns every `WindowAttention` into `PrunableWindowAttention`, same parameters and
state-dict keys, same computation, with a forward that calls `qkv` as a module and infers
the attention width from the heads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import swin_transformer_v2 as timm_v2
from torch import nn

from ..lean import LeanAttention
from .base import MAX_LOGIT_SCALE, AttentionSite, PerHeadTensor, head_width, register_adapter
from .timm_common import TimmSwinFamilyAdapter


class PrunableWindowAttention(timm_v2.WindowAttention):
    """timm's Swin v2 window attention for any head count (forward only differs)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        windows, n, _ = x.shape
        qkv = self.qkv(x)
        if self.q_bias is not None:
            qkv = qkv + torch.cat((self.q_bias, self.k_bias, self.v_bias))
        q, k, v = qkv.reshape(windows, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        attn = attn + 16 * torch.sigmoid(bias).unsqueeze(0)
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(windows, n, -1)
        return self.proj_drop(self.proj(x))


@register_adapter
class TimmSwinV2Adapter(TimmSwinFamilyAdapter):
    """Cosine attention has no 1/sqrt(d) scale; each head's temperature is its own
    `logit_scale` entry, cut with the head."""

    family = "timm Swin v2 (swin_transformer_v2: swinv2_tiny/small/base/large_*)"
    timm_module = timm_v2
    model_class = timm_v2.SwinTransformerV2
    prunable_attention = {timm_v2.WindowAttention: PrunableWindowAttention}
    post_norm = True
    merge_norm_first = False

    def attention_site(self, attn: nn.Module) -> AttentionSite:
        d = head_width(attn, attn.qkv.out_features // 3, attn.num_heads)
        per_head = [PerHeadTensor(attn, "logit_scale", axis=0)]
        if attn.q_bias is not None:
            per_head += [PerHeadTensor(attn, name, axis=0, per_head_size=d) for name in ("q_bias", "k_bias", "v_bias")]
        return AttentionSite(
            module=attn, qkv=attn.qkv, proj=attn.proj, num_heads=attn.num_heads, head_dim=d,
            window_area=attn.window_size[0] * attn.window_size[1],
            per_head=per_head, per_head_layers=[attn.cpb_mlp[-1]],
        )

    def lean_attention(self, attn: nn.Module):
        n = attn.window_size[0] * attn.window_size[1]
        bias = attn.qkv.bias
        if attn.q_bias is not None:
            separate = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            bias = separate if bias is None else bias + separate
        table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
        position = table[attn.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        return LeanAttention(attn.qkv.weight, bias, attn.num_heads, 16 * torch.sigmoid(position), attn.proj,
                             temperature=torch.clamp(attn.logit_scale, max=MAX_LOGIT_SCALE).exp().flatten())
