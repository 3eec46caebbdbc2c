"""What timm's three Swin families (v1, v2, v2-CR) share, so each adapter states only its
attention layout.

In timm 1.0 each of them keeps its stages in a ModuleList (`layers` or `stages`); stage s holds
`blocks`, each with an `attn` and a timm `Mlp` (`fc1`, `fc2`); the patch embedding belongs to
stage 0; the timm model file has a `checkpoint_filter_fn` for the family's published layouts.
Names are timm's (optionally with a pretrained tag); pretrained weights come through timm from
the Hugging Face Hub (its cache and HF_HUB_OFFLINE are honoured).
"""
from __future__ import annotations

import re
from abc import abstractmethod
from types import ModuleType
from typing import ClassVar

import timm
import timm.data
import torch
from torch import nn

from ..lean import ChannelsLast, LeanBlockSpec, LeanMergeSpec, LeanSpec, LeanStageSpec, LeanUnsupported, headless
from .base import AttentionSite, BlockSite, FamilyAdapter, MlpSite, fetch_error, is_headless
from .hub import hub_session


class TimmSwinFamilyAdapter(FamilyAdapter):
    """Base of the timm Swin adapters; subclasses set the class attributes below and describe
    one attention module in `attention_site`."""

    timm_module: ClassVar[ModuleType]
    """The timm model file, e.g. `timm.models.swin_transformer`."""
    model_class: ClassVar[type[nn.Module]]
    stages_attr: ClassVar[str] = "layers"
    """Name of the model's ModuleList of stages."""
    aliases: ClassVar[dict[str, str]] = {}
    """Short names of this family, e.g. swin_t -> swin_tiny_patch4_window7_224."""
    block_key = r"^(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.norm1\.weight$"
    width_key = "patch_embed.proj.weight"

    @classmethod
    def _names(cls) -> list[str]:
        return timm.list_models(module=cls.timm_module.__name__.rsplit(".", 1)[-1])

    @classmethod
    def resolve_name(cls, name: str) -> str | None:
        name = cls.aliases.get(name, name)
        base, _tag = timm.models.split_model_name_tag(name)
        return name if base in cls._names() else None

    @classmethod
    def known_names(cls) -> list[str]:
        return list(cls.aliases) + cls._names()

    @classmethod
    def foreign_name(cls, name: str) -> bool:
        return timm.is_model(timm.models.split_model_name_tag(name)[0])

    @classmethod
    def build(cls, name: str, *, pretrained: bool, **model_kwargs) -> nn.Module:
        if not pretrained:
            return timm.create_model(name, pretrained=False, **model_kwargs)
        try:
            with hub_session():
                return timm.create_model(name, pretrained=True, **model_kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            raise fetch_error(name, err) from err

    @classmethod
    def weights_description(cls, model: nn.Module, name: str) -> str:
        tag = getattr(model, "pretrained_cfg", {}).get("tag") or "default"
        return f"pretrained ({tag}, via timm / Hugging Face Hub)"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, cls.model_class)

    @abstractmethod
    def attention_site(self, attn: nn.Module) -> AttentionSite:
        """Where the heads of one attention module live."""

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

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

    def data_config(self) -> dict:
        """timm's data config (from the model's `pretrained_cfg`), with the input size and the
        channels the model was really built for (a model built with another img_size or
        in_chans keeps its pretrained config's). A 1-channel model gets the mean of the RGB
        means and standard deviations."""
        config = dict(timm.data.resolve_model_data_config(self.model))
        embed = getattr(self.model, "patch_embed", None)
        size = getattr(embed, "img_size", None) or config["input_size"][1:]
        channels = embed.proj.in_channels if embed is not None else config["input_size"][0]
        config["input_size"] = (channels, *size)
        for key in ("mean", "std"):
            if len(config[key]) != channels and channels == 1:
                config[key] = (sum(config[key]) / len(config[key]),)
        return config

    def build_kwargs(self) -> dict:
        return {"num_classes": self.model.num_classes}

    # -- lean export (models/lean.py) -------------------------------------------------------
    post_norm: ClassVar[bool] = False
    """Blocks compute x + norm(f(x)) (Swin v2) instead of x + f(norm(x))."""
    merge_norm_first: ClassVar[bool] = True
    """Patch merging normalises the 4C channels before its reduction (v1, v2-CR), not after (v2)."""

    def lean_attention(self, attn: nn.Module):
        """One attention module as a `models.lean.LeanAttention`."""
        raise LeanUnsupported(f"{self.family} has no lean export")

    def lean_spec(self, input_size: tuple[int, int, int]):
        m = self.model
        patch = m.patch_embed.patch_size
        grid = (input_size[1] // patch[0], input_size[2] // patch[1])
        if getattr(m.head.global_pool, "pool_type", None) != "avg":
            raise LeanUnsupported("the lean export averages the tokens; this head pools otherwise")
        stages = []
        for stage in self.stages():
            merge = None
            if not isinstance(stage.downsample, nn.Identity):
                merge = LeanMergeSpec(stage.downsample.norm, stage.downsample.reduction, self.merge_norm_first)
                grid = (grid[0] // 2, grid[1] // 2)
            blocks = []
            for block in stage.blocks:
                built = tuple(getattr(block, "input_resolution", None) or block.feat_size)
                if built != grid:
                    raise LeanUnsupported(f"blocks built for a {built} token map; the input gives {grid}")
                attention = headless(block.attn.proj) if is_headless(block.attn) else self.lean_attention(block.attn)
                blocks.append(LeanBlockSpec(attention, block.norm1, block.norm2, block.mlp,
                                            tuple(block.window_size), tuple(block.shift_size), self.post_norm,
                                            getattr(block, "norm3", None)))
            stages.append(LeanStageSpec(merge, blocks))
        channels_last = str(getattr(m.patch_embed, "output_fmt", "NCHW")).endswith("NHWC")
        stem = m.patch_embed if channels_last else nn.Sequential(m.patch_embed, ChannelsLast())
        return LeanSpec(stem, (input_size[1] // patch[0], input_size[2] // patch[1]), stages,
                        getattr(m, "norm", None) or nn.Identity(), m.head.fc)
