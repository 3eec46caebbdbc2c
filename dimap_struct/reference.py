"""The project's own small reference Swin, trained on the MNIST "train" split.

A true hierarchical timm ``SwinTransformer`` (three stages, shifted windows in the first two,
patch merging between stages) for 1 x 32 x 32 digits (MNIST's 28 x 28 resized). Its weights
and training recipe live beside this module in ``weights/``; ``tools/train_reference.py``
makes them.

    model = build_reference()                       # trained, eval mode
    cfg = timm.data.resolve_model_data_config(model) # == REFERENCE_DATA_CONFIG
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

REFERENCE_KWARGS = dict(
    img_size=32,
    patch_size=2,
    in_chans=1,
    num_classes=10,
    window_size=4,
    embed_dim=48,
    depths=(2, 2, 2),
    num_heads=(2, 4, 8),  # head_dim 24 in every stage
    mlp_ratio=4.0,
    drop_path_rate=0.1,
)

REFERENCE_DATA_CONFIG = {
    "input_size": (1, 32, 32),
    "mean": (0.1307,),
    "std": (0.3081,),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}

WEIGHTS_PATH = Path(__file__).with_name("weights") / "reference.safetensors"
RECIPE_PATH = WEIGHTS_PATH.with_name("reference.json")


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pretrained_cfg() -> dict:
    """The timm ``pretrained_cfg`` that makes ``resolve_model_data_config`` give
    :data:`REFERENCE_DATA_CONFIG`."""
    return {
        "architecture": "swin_reference_mnist",
        "tag": "dimap_struct",
        "num_classes": REFERENCE_KWARGS["num_classes"],
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        "crop_mode": "center",
        **REFERENCE_DATA_CONFIG,
    }


def build_reference(pretrained: bool = True, seed: int = 0, *,
                    drop_path_rate: float | None = None) -> nn.Module:
    """The reference Swin in eval mode: random init from ``seed``, then the trained weights
    (checked against the recipe's SHA-256, RuntimeError on mismatch) if ``pretrained``.

    ``drop_path_rate`` overrides the stochastic depth used in training (it owns no weights).
    """
    from timm.models.swin_transformer import SwinTransformer

    kwargs = dict(REFERENCE_KWARGS)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SwinTransformer(**kwargs)
    model.pretrained_cfg = pretrained_cfg()
    model.default_cfg = model.pretrained_cfg
    if pretrained:
        from safetensors.torch import load_file

        if not WEIGHTS_PATH.is_file() or not RECIPE_PATH.is_file():
            raise RuntimeError(f"reference weights missing: {WEIGHTS_PATH} and {RECIPE_PATH} "
                               "(make them with tools/train_reference.py)")
        expected = json.loads(RECIPE_PATH.read_text())["sha256"]
        actual = sha256_file(WEIGHTS_PATH)
        if actual != expected:
            raise RuntimeError(f"{WEIGHTS_PATH} has SHA-256 {actual}, the recipe "
                               f"{RECIPE_PATH.name} says {expected}")
        model.load_state_dict(load_file(WEIGHTS_PATH))
    return model.eval()
