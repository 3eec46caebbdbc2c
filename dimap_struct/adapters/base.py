"""The family-adapter contract: where heads, MLPs and per-head tensors live in one model family.

A family adapter is the only code that knows a model family's module layout. The generic
pipeline (scoring, selection, costs, surgery, verification) works on the `BlockSite` views it
returns, so supporting a new Swin family means adding one adapter and registering it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class PerHeadTensor:
    """A parameter with one slice per attention head along `axis` (e.g. a relative-position
    bias table of shape (T, heads): axis 1)."""

    module: nn.Module
    name: str
    axis: int

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.name)


@dataclass
class AttentionSite:
    """One windowed multi-head attention.

    `qkv` is a fused projection whose output rows are laid out as (3, num_heads, head_dim):
    row t*H*d + h*d + i is element i of head h of q (t=0), k (t=1) or v (t=2). `proj` reads
    the concatenated heads, so its input columns are laid out as (num_heads, head_dim).
    """

    module: nn.Module
    qkv: nn.Linear
    proj: nn.Linear
    num_heads: int
    head_dim: int
    window_area: int
    per_head: list[PerHeadTensor] = field(default_factory=list)


@dataclass
class MlpSite:
    """A two-layer MLP: hidden channel j is row j of `fc1` (and its bias) and column j of `fc2`."""

    fc1: nn.Linear
    fc2: nn.Linear

    @property
    def width(self) -> int:
        return self.fc1.out_features


@dataclass
class BlockSite:
    """One transformer block: its qualified name, stage index, attention and MLP."""

    name: str
    stage: int
    attn: AttentionSite
    mlp: MlpSite


class FamilyAdapter(ABC):
    """Knows one model family. Subclasses register themselves with `register_adapter`."""

    family: ClassVar[str]
    """Human-readable family name, e.g. 'timm Swin v1 (swin_transformer)'."""

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    @abstractmethod
    def accepts_name(cls, timm_name: str) -> bool:
        """True if a timm model name (without pretrained tag) belongs to this family."""

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """True if an instantiated model belongs to this family."""

    @abstractmethod
    def blocks(self) -> list[BlockSite]:
        """Every prunable block, in forward order."""

    @abstractmethod
    def stage_of(self, module_name: str) -> int | None:
        """Stage index a non-block module belongs to (for per-stage reports), None if global."""

    @abstractmethod
    def set_num_heads(self, site: AttentionSite, num_heads: int) -> None:
        """Update the attention module's bookkeeping after heads were cut."""

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a checkpoint in the family's other published layouts to this model's keys."""
        return state_dict

    def build_kwargs(self) -> dict:
        """Extra keyword arguments to recreate a model like this one (e.g. num_classes)."""
        return {}


_REGISTRY: list[type[FamilyAdapter]] = []


def register_adapter(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    _REGISTRY.append(cls)
    return cls


def registered_adapters() -> list[type[FamilyAdapter]]:
    return list(_REGISTRY)


def supported_families() -> str:
    return ", ".join(cls.family for cls in _REGISTRY)


def adapter_for_name(timm_name: str) -> type[FamilyAdapter] | None:
    return next((cls for cls in _REGISTRY if cls.accepts_name(timm_name)), None)


def adapter_for_model(model: nn.Module) -> FamilyAdapter | None:
    cls = next((cls for cls in _REGISTRY if cls.matches(model)), None)
    return cls(model) if cls else None
