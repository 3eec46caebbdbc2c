"""INT8: quantize an exported float ONNX file with onnxruntime.quantization, and measure
what it costs in accuracy (docs/method.md section 10).

Schemes (`--quantize`):
- `int8-dynamic`: weights int8 ahead of time, activations quantized at run time
  (`quantize_dynamic`); needs no data;
- `int8-static`: weights and activations int8, QDQ format, activation ranges calibrated on
  images of `--calib-data` (`quantize_static`);
- `int8`: static when `--calib-data` is given, else dynamic.

The measurement: with data, the float and the INT8 model run on images of the calibration
data's train split that calibration did not use; the report gives their top-1 agreement and
each one's top-1 against the labels. Without data nothing is measured, and the report says so.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from ..data import build_dataset, is_labelled
from ..errors import UserError
from .choices import resolve_scheme
from .onnx_file import open_session

OP_TYPES = ["MatMul", "Gemm"]
"""The linear layers; the patch embedding's Conv and attention's softmax stay float."""


@dataclass
class QuantizationReport:
    """What `quantize` did and what it measured (stored in the report and the ONNX metadata)."""

    scheme: str
    weights: str
    activations: str
    per_channel: bool
    reduce_range: bool
    op_types: list[str]
    calibration: dict | None
    """Static: images, data, data_sha256, method."""
    evaluation: dict | None
    """images, agreement_top1 (%), float_top1 / int8_top1 (%) when labelled, source."""
    library: str
    seconds: float = 0.0
    probe_max_abs_diff: float | None = None
    """Max |INT8 - float| of the logits on a seeded random batch of 2 (the INT8 file's own run)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantizeRequest:
    """A resolved `--quantize`: the scheme, and with data the calibration images (static) and the
    disjoint labelled images on which float and INT8 are compared."""

    scheme: str
    calibration: torch.Tensor | None = None
    check_images: torch.Tensor | None = None
    check_labels: torch.Tensor | None = None
    data: str | None = None
    source: str | None = None
    """Where the check images come from, in words (for the report)."""


def make_request(scheme: str | None, data, data_config: dict, count: int, seed: int = 0) -> QuantizeRequest | None:
    """Resolve `--quantize` with its data (`--calib-data`, None for none), reading the images
    now (so bad data fails before any pruning): static takes `count` images to calibrate on and
    the next `count` of the same seeded permutation to check on; dynamic checks on the first
    `count`."""
    scheme = resolve_scheme(scheme, data)
    if scheme is None:
        return None
    if data is None:
        return QuantizeRequest(scheme)
    static = scheme == "int8-static"
    check_images, check_labels = labelled_sample(data, data_config, count, seed, skip=count if static else 0)
    calibration = labelled_sample(data, data_config, count, seed)[0] if static else None
    source = f"train split of {data}" + (", images not used to calibrate" if static else "")
    return QuantizeRequest(scheme, calibration, check_images, check_labels, str(data), source)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a float32 batch (N, C, H, W)."""

    def __init__(self, name: str, images: torch.Tensor, batch: int = 16):
        self.feeds = [{name: images[i:i + batch].numpy()} for i in range(0, len(images), batch)]

    def get_next(self):
        return self.feeds.pop(0) if self.feeds else None


def quantize_file(float_path: Path, out_path: Path, scheme: str, *, calibration: torch.Tensor | None = None,
                  per_channel: bool = True, reduce_range: bool = True) -> QuantizationReport:
    """Write the INT8 form of `float_path` to `out_path`. `calibration` (N, C, H, W, preprocessed)
    is required for 'int8-static'. reduce_range: 7-bit weights, which onnxruntime recommends on
    x86 without VNNI (AVX2 u8s8 products can saturate in 16 bits)."""
    from onnxruntime import quantization as q  # deferred: start-up (0.2 s), loaded only with --quantize

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".dimap-quant-", dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            q.quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the export itself if it fails
            prepared = float_path
        # FLOAT: onnxruntime needs it for tensors without inferred types; MatMulConstBOnly: only the
        # linear layers (weights are constants), not q.k^T and attn.v, in both schemes alike
        extra = {"DefaultTensorType": 1, "MatMulConstBOnly": True}
        if scheme == "int8-dynamic":
            q.quantize_dynamic(str(prepared), str(out_path), weight_type=q.QuantType.QInt8, per_channel=per_channel,
                               reduce_range=reduce_range, op_types_to_quantize=OP_TYPES, extra_options=extra)
            calib = None
        else:
            if calibration is None or len(calibration) == 0:
                raise UserError("static INT8 quantization needs calibration images (--calib-data)")
            name = _input_name(prepared)
            q.quantize_static(str(prepared), str(out_path), _Reader(name, calibration), quant_format=q.QuantFormat.QDQ,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              per_channel=per_channel, reduce_range=reduce_range, op_types_to_quantize=OP_TYPES,
                              calibrate_method=q.CalibrationMethod.MinMax, extra_options=extra)
            calib = {"images": len(calibration), "method": "MinMax"}
    return QuantizationReport(scheme, "int8", "uint8", per_channel, reduce_range, OP_TYPES, calib, None,
                              f"onnxruntime.quantization {onnxruntime.__version__}",
                              round(time.perf_counter() - start, 2))


def compare(float_path: Path, int8_path: Path, images: torch.Tensor, labels: torch.Tensor | None,
            threads: int | None = None, batch: int = 64) -> dict:
    """Top-1 agreement (%) of the two files on `images`, and each one's top-1 (%) if `labels`."""
    sessions = [open_session(p, threads) for p in (float_path, int8_path)]
    predictions = []
    for session in sessions:
        name = session.get_inputs()[0].name
        out = [session.run(None, {name: images[i:i + batch].numpy()})[0] for i in range(0, len(images), batch)]
        predictions.append(np.concatenate(out).argmax(axis=1))
    result = {"images": len(images), "agreement_top1": float(100 * np.mean(predictions[0] == predictions[1]))}
    if labels is not None:
        truth = labels.numpy()
        result["float_top1"] = float(100 * np.mean(predictions[0] == truth))
        result["int8_top1"] = float(100 * np.mean(predictions[1] == truth))
    return result


def compare_outputs(float_path: Path, int8_path: Path, probe: torch.Tensor) -> float:
    """Max abs difference of the two files' outputs on `probe` in onnxruntime."""
    outs = []
    for path in (float_path, int8_path):
        session = open_session(path)
        outs.append(session.run(None, {session.get_inputs()[0].name: probe.numpy()})[0])
    return float(np.abs(outs[0] - outs[1]).max())


def labelled_sample(data: str | os.PathLike, data_config: dict, count: int, seed: int, skip: int = 0,
                    fewer: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`count` preprocessed images and labels (None for a folder without class folders) of the
    train split of `data`: entries skip ..
    skip+count of a seeded permutation (skip=0 gives `prune.calibration.calibration_images`'
    images; skip=count the next, disjoint ones). UserError if the split holds too few, unless
    `fewer`: then what there is after `skip` (possibly none)."""
    dataset = build_dataset(data, "train", data_config, labels_required=False)
    labelled = is_labelled(dataset)  # a flat folder calibrates; its check then reports agreement only
    if fewer:
        count = max(0, min(count, len(dataset) - skip))
    if skip + count > len(dataset):
        raise UserError(f"the calibration data has {len(dataset)} images in its train split; "
                        f"{skip + count} are needed (--calib-images {count}, calibration and check)")
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[skip:skip + count].tolist()
    if not pick:
        return torch.empty(0), None
    if hasattr(dataset, "batch"):  # folder and MNIST data sets take a list of indices at once
        images, labels = dataset[pick][:2]
        return images, torch.as_tensor(labels) if labelled else None
    pairs = [dataset[i] for i in pick]
    return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs]) if labelled else None


def _input_name(path: Path) -> str:
    return onnx.load(str(path), load_external_data=False).graph.input[0].name
