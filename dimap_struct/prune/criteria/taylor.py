"""First-order Taylor saliency, the data-driven baseline: sum over a group of |w * dL/dw|.

Its `prepare` hook (`accumulate_gradients`) runs calibration batches through the model and
leaves d(mean cross-entropy)/dw in every parameter's `.grad`; the scorer reads them.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...data import build_loader, is_labelled, num_classes
from ...errors import UserError
from ..scoring import channel_weight_views, head_weight_views
from .registry import Calibration, GroupScores, Score, ScoreContext, register


def accumulate_gradients(model: nn.Module, calib: Calibration, batch_size: int = 32) -> int:
    """Run `calib.batches` batches of the "train" split of `calib.data` through `model` and
    accumulate the gradient of the mean loss; return the number of images used. The model
    stays in eval mode (no dropout, fixed norms): the gradient describes the model to prune."""
    loader = build_loader(calib.data, "train", calib.data_config, batch_size, shuffle=True, seed=calib.seed,
                          labels_required=False)
    if not is_labelled(loader.dataset):
        raise UserError(f"--criterion taylor needs labelled calibration data: {calib.data} has no class folders "
                        "(one subfolder per class)")
    classes = num_classes(loader.dataset)
    if calib.num_classes is not None and classes > calib.num_classes:
        raise UserError(f"calibration data has {classes} classes but the model predicts {calib.num_classes}")
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    with torch.enable_grad():
        for step, (images, labels) in enumerate(loader):
            if step == calib.batches:
                break
            loss = F.cross_entropy(model(images), labels) / calib.batches
            loss.backward()
            seen += len(labels)
    if seen == 0:
        raise UserError(f"calibration data {calib.data} has no images")
    return seen


def taylor_scores(blocks, context: ScoreContext) -> GroupScores:
    """Needs gradients of the calibration loss in `.grad` of qkv / proj / fc1 / fc2 weights."""
    for b in blocks:
        for layer in (*[p for p, _ in b.attn.projections], b.attn.proj, b.mlp.fc1, b.mlp.fc2):
            if layer.weight.grad is None:
                raise ValueError("taylor needs gradients: run taylor.accumulate_gradients first")

    def saliency(views: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
        return sum((v.to(torch.float64) * g.to(torch.float64)).abs().sum(1) for v, g in zip(views, grads))

    return GroupScores(
        heads=[saliency(head_weight_views(b.attn), head_weight_views(b.attn, grad=True)) for b in blocks],
        mlp=[saliency(channel_weight_views(b.mlp), channel_weight_views(b.mlp, grad=True)) for b in blocks],
    )


register(Score("taylor", taylor_scores, "first-order Taylor |w * dL/dw| summed per group (data-driven: --calib-data)",
               prepare=accumulate_gradients, cleanup=lambda model: model.zero_grad(set_to_none=True)))
