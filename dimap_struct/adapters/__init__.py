"""Model-family adapters. Importing this package registers every built-in adapter."""
from .base import (
    AttentionSite,
    BlockSite,
    FamilyAdapter,
    MlpSite,
    PerHeadTensor,
    adapter_for_model,
    adapter_for_name,
    register_adapter,
    registered_adapters,
    supported_families,
)
from . import timm_swin  # noqa: F401  (registers the adapter)

__all__ = [
    "AttentionSite", "BlockSite", "FamilyAdapter", "MlpSite", "PerHeadTensor",
    "adapter_for_model", "adapter_for_name", "register_adapter", "registered_adapters",
    "supported_families",
]
