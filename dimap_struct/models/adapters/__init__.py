"""Model-family adapters, one file per family. Importing this package registers them all."""
from .base import (
    AttentionSite,
    BlockSite,
    FamilyAdapter,
    MlpSite,
    PerHeadTensor,
    ResidualSite,
    adapter_for_model,
    family_for_name,
    is_foreign_name,
    register_adapter,
    suggestions,
    supported_families,
)
from . import timm_swin, timm_swinv2, timm_swinv2_cr, torchvision_swin, reference, hf_swin  # noqa: F401,E402

__all__ = [
    "AttentionSite", "BlockSite", "FamilyAdapter", "MlpSite", "PerHeadTensor", "ResidualSite",
    "adapter_for_model", "family_for_name", "is_foreign_name", "register_adapter", "suggestions",
    "supported_families",
]
