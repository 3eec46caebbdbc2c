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
from . import timm_swin, timm_swinv2, timm_swinv2_cr, torchvision_swin  # noqa: F401,E402  (register the adapters)

__all__ = [
    "AttentionSite", "BlockSite", "FamilyAdapter", "MlpSite", "PerHeadTensor",
    "adapter_for_model", "adapter_for_name", "register_adapter", "registered_adapters",
    "supported_families",
]
