"""Calibration gradients for the data-driven `taylor` criterion.

`accumulate_gradients` leaves d(mean cross-entropy over the calibration batches)/dw in every
parameter's `.grad`; `criteria.taylor` then scores each group by sum |w * dL/dw|.
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserError


def accumulate_gradients(model: nn.Module, data: str | os.PathLike, data_config: dict, *,
                         batches: int = 4, batch_size: int = 32, seed: int = 0) -> int:
    """Run `batches` batches of the "train" split of `data` (MNIST or an image folder, see
    `data.build_dataset`) through `model` and accumulate the gradient of the mean loss.
    Returns the number of images used. The model is left in eval mode (no dropout, fixed
    norms) so the gradient describes the model that will be pruned."""
    from .data import build_loader, num_classes

    loader = build_loader(data, "train", data_config, batch_size, shuffle=True, seed=seed)
    classes = num_classes(loader.dataset)
    outputs = getattr(model, "num_classes", None)
    if outputs is not None and classes > outputs:
        raise UserError(f"calibration data has {classes} classes but the model predicts {outputs}")
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    with torch.enable_grad():
        for step, (images, labels) in enumerate(loader):
            if step == batches:
                break
            loss = F.cross_entropy(model(images), labels) / batches
            loss.backward()
            seen += len(labels)
    if seen == 0:
        raise UserError(f"calibration data {data} has no images")
    return seen
