"""The project's own trained reference Swins (`models/reference.py`): timm Swin v1 models that
this package builds and ships weights for, by name.

They are timm `SwinTransformer`s, so everything but naming and building is the timm v1
adapter's; a model is recognised as a reference by the architecture name in its
`pretrained_cfg`.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import UserError
from ..reference import ALIASES, REFERENCES, REMOVED, build_reference
from .base import register_adapter
from .timm_swin import TimmSwinV1Adapter


@register_adapter
class ReferenceAdapter(TimmSwinV1Adapter):
    family = "dimap-struct reference Swins (" + ", ".join([*REFERENCES, *ALIASES]) + ")"

    @classmethod
    def resolve_name(cls, name: str) -> str | None:
        if name in REMOVED:
            raise UserError(REMOVED[name])
        name = ALIASES.get(name, name)
        return name if name in REFERENCES else None

    @classmethod
    def known_names(cls) -> list[str]:
        return list(REFERENCES) + list(ALIASES)

    @classmethod
    def foreign_name(cls, name: str) -> bool:
        return False

    @classmethod
    def build(cls, name: str, *, pretrained: bool, **model_kwargs) -> nn.Module:
        other = sorted(set(model_kwargs) - {"drop_path_rate"})
        if other:
            raise UserError(f"the reference model takes only the model option drop_path_rate, not {', '.join(other)}")
        return build_reference(name, pretrained=pretrained, seed=torch.initial_seed(),
                               drop_path_rate=model_kwargs.get("drop_path_rate"))

    @classmethod
    def weights_description(cls, model: nn.Module, name: str) -> str:
        return f"trained reference (dimap_struct/models/weights/{REFERENCES[name].recipe.name})"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture")
        return super().matches(model) and any(arch == r.architecture for r in REFERENCES.values())

    def build_kwargs(self) -> dict:
        return {}
