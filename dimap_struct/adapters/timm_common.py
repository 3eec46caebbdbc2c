"""What timm's three Swin families (v1, v2, v2-CR) share, so each adapter states only its
attention layout.

In timm 1.0 each of them keeps its stages in a ModuleList (`layers` or `stages`); stage s holds
`blocks`, each with an `attn` and a timm `Mlp` (`fc1`, `fc2`); the patch embedding belongs to
stage 0; the timm model file has a `checkpoint_filter_fn` for the family's published layouts.
"""
from __future__ import annotations

import re
from abc import abstractmethod
from types import ModuleType
from typing import ClassVar

import timm
import torch
from torch import nn

from .base import AttentionSite, BlockSite, FamilyAdapter, MlpSite


class TimmSwinFamilyAdapter(FamilyAdapter):
    """Base of the timm Swin adapters; subclasses set the class attributes below and describe
    one attention module in `attention_site`."""

    timm_module: ClassVar[ModuleType]
    """The timm model file, e.g. `timm.models.swin_transformer`."""
    model_class: ClassVar[type[nn.Module]]
    stages_attr: ClassVar[str] = "layers"
    """Name of the model's ModuleList of stages."""

    @classmethod
    def accepts_name(cls, timm_name: str) -> bool:
        return timm_name in timm.list_models(module=cls.timm_module.__name__.rsplit(".", 1)[-1])

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, cls.model_class)

    @abstractmethod
    def attention_site(self, attn: nn.Module) -> AttentionSite:
        """Where the heads of one attention module live."""

    def stages(self) -> nn.ModuleList:
        return getattr(self.model, self.stages_attr)

    def blocks(self) -> list[BlockSite]:
        return [BlockSite(name=f"{self.stages_attr}.{s}.blocks.{b}", stage=s, attn=self.attention_site(block.attn),
                          mlp=MlpSite(fc1=block.mlp.fc1, fc2=block.mlp.fc2))
                for s, stage in enumerate(self.stages()) for b, block in enumerate(stage.blocks)]

    def stage_of(self, module_name: str) -> int | None:
        if module_name.startswith("patch_embed"):
            return 0
        match = re.match(rf"^{self.stages_attr}\.(\d+)\.", module_name)
        return int(match.group(1)) if match else None

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # timm's own filter maps the official releases (downsample at the end of a stage,
        # buffers in the file, v2-CR's old 'tau') to its module layout
        return self.timm_module.checkpoint_filter_fn(state_dict, self.model)

    def build_kwargs(self) -> dict:
        return {"num_classes": self.model.num_classes}
