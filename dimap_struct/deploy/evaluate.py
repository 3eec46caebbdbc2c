"""Top-1 / top-5 accuracy of a classifier given as an ONNX file, a model name or an nn.Module.

ONNX files run in onnxruntime and take their preprocessing (input size, mean, std) from the
'dimap_struct' metadata that `dimap-compress` writes; PyTorch models take it from timm's data
config. Data: MNIST or an image folder (`data.build_dataset`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data import build_loader, num_classes
from ..errors import UserError
from .onnx_file import output_width, read_report
from .runtimes import open_runner


@dataclass
class Classifier:
    """Something that maps a float32 batch (B, C, H, W) to logits (B, classes)."""

    predict: Callable[[torch.Tensor], torch.Tensor]
    data_config: dict
    num_classes: int | None
    description: str


def onnx_classifier(path: str | os.PathLike, threads: int | None = None, runtime: str = "onnxruntime") -> Classifier:
    """An ONNX file in `runtime` (onnxruntime or openvino, `deploy.runtimes`), preprocessed as
    its stored report says."""
    path = Path(path)
    report = read_report(path)
    if report is None:
        raise UserError(f"{path} has no dimap_struct metadata, so its preprocessing (input size, mean, std) "
                        "is unknown; export it with dimap-compress")
    run, _ = open_runner(path, runtime, threads)
    classes = output_width(path)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(run(x.numpy().astype(np.float32, copy=False))))

    return Classifier(predict, report.data_config, classes if isinstance(classes, int) else None,
                      f"{path.name} ({runtime}, from {report.source.model})")


def torch_classifier(model: nn.Module, data_config: dict, description: str,
                     num_classes: int | None = None) -> Classifier:
    """A PyTorch module in eval mode, without gradients."""
    model.eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return Classifier(predict, data_config, num_classes, description)


def load_classifier(spec: str, *, checkpoint=None, pretrained: bool = True, seed: int = 0,
                    threads: int | None = None, runtime: str = "onnxruntime") -> Classifier:
    """`spec`: a path ending in .onnx, a pruned checkpoint, or a model name (`prune.replay.load_any`)."""
    if str(spec).lower().endswith(".onnx"):
        return onnx_classifier(spec, threads, runtime)
    from ..prune.replay import load_any  # deferred: start-up; ONNX files evaluate without timm and the models

    loaded = load_any(spec, checkpoint=checkpoint, pretrained=pretrained, seed=seed)
    return torch_classifier(loaded.model, loaded.data_config, f"{loaded.name} ({loaded.weights})",
                            loaded.adapter.num_classes)


def accuracy(classifier: Classifier, data: str | os.PathLike | None, *, split: str = "eval",
             batch_size: int = 128, limit: int | None = None,
             on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Top-1 and top-5 (percent) of `classifier` on `split` of `data` (None: the directory in $DIMAP_DATA).
    `on_batch(done, total)` reports progress in images. The result's "warnings" list says when
    the model has more outputs than the data has classes (a likely mix-up, not an error)."""
    loader = build_loader(data, split, classifier.data_config, batch_size)
    classes = num_classes(loader.dataset)
    if classifier.num_classes is not None and classes > classifier.num_classes:
        raise UserError(f"the data has {classes} classes but the model predicts {classifier.num_classes}")
    warnings = []
    if classifier.num_classes is not None and classes < classifier.num_classes:
        warnings.append(f"the model has {classifier.num_classes} outputs but the data has {classes} classes: "
                        f"labels are read as the first {classes} outputs; is this the right model for this data?")
    total = len(loader.dataset) if limit is None else min(limit, len(loader.dataset))
    top1 = top5 = seen = 0
    for images, labels in loader:
        if seen >= total:
            break
        images, labels = images[: total - seen], labels[: total - seen]
        logits = classifier.predict(images)
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += int((best[:, 0] == labels).sum())
        top5 += int((best == labels[:, None]).any(1).sum())
        seen += len(labels)
        if on_batch:
            on_batch(seen, total)
    if seen == 0:
        raise UserError("the evaluation data is empty")
    return {"top1": 100.0 * top1 / seen, "top5": 100.0 * top5 / seen, "images": seen, "split": split,
            "warnings": warnings}


AGREEMENT_WARNING = 50.0
"""Top-1 agreement (%) with the dense model under which a run warns that the plan breaks it."""


@torch.no_grad()
def logits(model: nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """`model`'s outputs (eval mode) on `images`, in batches."""
    model.eval()
    outs = [model(images[i:i + batch]) for i in range(0, len(images), batch)]
    return torch.cat([getattr(o, "logits", o) for o in outs]).float()


def agreement(dense: torch.Tensor, pruned: torch.Tensor, labels: torch.Tensor | None, source: str) -> dict:
    """How far a pruned model's logits are from the dense model's on the same images: top-1
    agreement (%), relative logit error ||pruned - dense|| / ||dense|| (Frobenius, over the whole
    batch), and each one's top-1 (%) when `labels` are given."""
    result = {"images": len(dense), "source": source,
              "agreement_top1": float(100 * (dense.argmax(1) == pruned.argmax(1)).float().mean()),
              "relative_logit_error": float((pruned - dense).norm() / dense.norm().clamp(min=1e-12))}
    if labels is not None:
        result["dense_top1"] = float(100 * (dense.argmax(1) == labels).float().mean())
        result["pruned_top1"] = float(100 * (pruned.argmax(1) == labels).float().mean())
    return result
