"""The project's own small reference Swins, built by name (`REFERENCES`):

- 'reference-mnist' (alias 'reference'): three stages (2-2-2 blocks, 2-4-8 heads, width 48)
  for 1 x 32 x 32 digits, trained on the MNIST "train" split by `tools/train_reference.py`;
- 'reference-cifar10': Swin-T's proportions scaled down (four stages, 2-2-6-2 blocks, 2-4-8-16
  heads, width 32, window 4, patch 2) for 3 x 32 x 32 photographs, trained on CIFAR-10's
  `train/` by `tools/train_folder_reference.py`.

Both are true hierarchical timm ``SwinTransformer``s (shifted windows, patch merging). Their
weights and training recipes live beside this module in ``weights/``.

    model = build_reference("reference-cifar10")    # trained, eval mode
    cfg = timm.data.resolve_model_data_config(model) # == REFERENCE_DATA_CONFIG
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.models.swin_transformer import SwinTransformer
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


@dataclass(frozen=True)
class ReferenceModel:
    """One shipped reference: timm SwinTransformer options, preprocessing and weight files."""

    architecture: str
    """timm ``pretrained_cfg`` architecture name (how the adapter recognises the model)."""
    kwargs: dict
    data_config: dict
    weights: Path
    recipe: Path

    def pretrained_cfg(self) -> dict:
        """The timm ``pretrained_cfg`` that makes ``resolve_model_data_config`` give
        ``data_config``."""
        return {"architecture": self.architecture, "tag": "dimap_struct", "num_classes": self.kwargs["num_classes"],
                "first_conv": "patch_embed.proj", "classifier": "head.fc", "crop_mode": "center",
                **self.data_config}


CIFAR10_KWARGS = dict(
    img_size=32,
    patch_size=2,
    in_chans=3,
    num_classes=10,
    window_size=4,
    embed_dim=32,
    depths=(2, 2, 6, 2),
    num_heads=(2, 4, 8, 16),  # head_dim 16 in every stage
    mlp_ratio=4.0,
    drop_path_rate=0.1,
)

CIFAR10_DATA_CONFIG = {
    "input_size": (3, 32, 32),
    "mean": (0.4914, 0.4822, 0.4465),
    "std": (0.2470, 0.2435, 0.2616),
    "interpolation": "bicubic",
    "crop_pct": 1.0,
}

CIFAR10_WEIGHTS_PATH = WEIGHTS_PATH.with_name("reference_cifar10.safetensors")

REFERENCES = {
    "reference-mnist": ReferenceModel("swin_reference_mnist", REFERENCE_KWARGS, REFERENCE_DATA_CONFIG, WEIGHTS_PATH,
                                      RECIPE_PATH),
    "reference-cifar10": ReferenceModel("swin_reference_cifar10", CIFAR10_KWARGS, CIFAR10_DATA_CONFIG,
                                        CIFAR10_WEIGHTS_PATH, CIFAR10_WEIGHTS_PATH.with_suffix(".json")),
}
"""Built-in reference models by name: the digits model (MNIST, 1 x 32 x 32) and the CIFAR-10
model (real photographs, 3 x 32 x 32), all trained by this project (recipes in `weights/`)."""

V1_COMMIT = "c50a670c8377"
"""The commit that named the first CIFAR-10 weights `reference-cifar10-v1`; its tree holds them."""
REMOVED = {
    "reference-cifar10-v1": "'reference-cifar10-v1' was removed from the package (the first, less trained CIFAR-10 "
    "weights, superseded by 'reference-cifar10'); they are in the "
    f"repository's history: git show {V1_COMMIT}:dimap_struct/models/weights/reference_cifar10_v1.safetensors "
    "> reference_cifar10_v1.safetensors, then use reference-cifar10 --checkpoint reference_cifar10_v1.safetensors",
}
"""Names of reference models no longer shipped, and the one line that says where they went."""

ALIASES = {"reference": "reference-mnist"}
"""'reference' was the digits model's only name; commands that use it keep working."""


def build_reference(name: str = "reference-mnist", pretrained: bool = True, seed: int = 0, *,
                    drop_path_rate: float | None = None) -> nn.Module:
    """The reference Swin `name` in eval mode: random init from ``seed``, then the trained
    weights (checked against the recipe's SHA-256, RuntimeError on mismatch) if ``pretrained``.

    ``drop_path_rate`` overrides the stochastic depth used in training (it owns no weights).
    """
    ref = REFERENCES[ALIASES.get(name, name)]
    kwargs = dict(ref.kwargs)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SwinTransformer(**kwargs)
    model.pretrained_cfg = ref.pretrained_cfg()
    model.default_cfg = model.pretrained_cfg
    if pretrained:
        if not ref.weights.is_file() or not ref.recipe.is_file():
            raise RuntimeError(f"reference weights missing: {ref.weights} and {ref.recipe} "
                               "(make them with tools/train_reference.py)")
        expected = json.loads(ref.recipe.read_text())["sha256"]
        actual = sha256_file(ref.weights)
        if actual != expected:
            raise RuntimeError(f"{ref.weights} has SHA-256 {actual}, the recipe "
                               f"{ref.recipe.name} says {expected}")
        model.load_state_dict(load_file(ref.weights))
    return model.eval()
