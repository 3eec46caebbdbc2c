"""Export: ONNX with a dynamic batch axis, checked, compared with PyTorch, atomic.

The file appears at its final path only after onnx.checker and the onnxruntime parity check
passed; until then it lives in a temporary file beside it, removed on any failure or Ctrl-C.
`write_model_and_report` publishes the ONNX file and its JSON report together.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from ..data import data_fingerprint
from ..files import TEMP_PREFIX, staged
from ..models.adapters import adapter_for_model
from ..models.lean import LeanUnsupported, lean_model
from ..report.schema import OnnxInfo
from .onnx_file import METADATA_KEY
from .quantize import compare, compare_outputs, quantize_file

PARITY_TOLERANCE = 1e-3
LEAN_TOLERANCE = 1e-4
"""The lean form (models/lean.py) against the model's own forward, in PyTorch."""


class ParityError(RuntimeError):
    """onnxruntime disagrees with PyTorch beyond PARITY_TOLERANCE."""


def export_form(model: nn.Module, input_size, plain: bool = False) -> tuple[nn.Module, str, str | None]:
    """The module whose trace becomes the ONNX graph: the lean form of `model` (`models.lean`)
    unless `plain`, or when its family or input size has none. Returns (module, 'lean' or
    'plain', why plain when lean was asked for). The lean form must match the model on a seeded
    batch of 3 within LEAN_TOLERANCE x max(1, max |output|), else the plain graph is exported
    (and the reason noted: tests require the lean form for every family)."""
    if plain:
        return model, "plain", None
    model.eval()
    adapter = adapter_for_model(model)
    if adapter is None:
        return model, "plain", "no family adapter knows this model"
    try:
        lean = lean_model(model, adapter, input_size)
    except LeanUnsupported as err:
        return model, "plain", str(err)
    probe = torch.randn(3, *input_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(probe)
        diff = float((lean(probe) - ref).abs().max())
    allowed = LEAN_TOLERANCE * max(1.0, float(ref.abs().max()))
    if not diff <= allowed:  # a family or size we describe wrongly: keep the user's export, say so
        return model, "plain", f"the lean form differed from the model by {diff:.3g} (> {allowed:.3g})"
    return lean, "lean", None


def export_onnx(model: nn.Module, path: Path, input_size, metadata: dict, *, opset: int = 17,
                probe: torch.Tensor | None = None, slim: bool = True, traced: nn.Module | None = None) -> float:
    """Export `traced` (default: `model`, e.g. its lean form from `export_form`) to `path` (a
    temporary file of `files.staged`) and return the max abs difference between onnxruntime
    (CPU) and `model` in PyTorch on `probe` (default: a seeded batch of 2). Raises ParityError
    above 1e-3. `metadata` is stored as JSON under the ONNX metadata key 'dimap_struct'.
    `slim=False` skips onnxslim (to measure what it brings)."""
    model.eval()
    traced = traced if traced is not None else model
    example = torch.zeros(1, *input_size)
    probe = probe if probe is not None else torch.randn(2, *input_size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        # the TorchScript exporter: 5-7x faster than dynamo here and writes one self-contained file
        warnings.simplefilter("ignore")
        torch.onnx.export(
            traced, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    proto = _slim(proto) if slim else proto
    proto.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(metadata)))
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    diff = onnx_parity(path, model, probe)
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(f"onnxruntime output differs from PyTorch by {diff:.3g} (> {PARITY_TOLERANCE})")
    return diff


def _slim(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Simplify the graph with onnxslim (constant folding, fused reshapes): measured 4% faster
    for dense swin_t and 7-9% for a pruned one in onnxruntime (docs/decisions.md, timing).
    Parity is checked after it like for any export; if onnxslim fails, the plain graph is kept."""
    try:  # the import too: a broken onnxslim install costs only this optimisation, never the export
        import onnxslim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return onnxslim.slim(proto)
    except Exception:  # an optional optimisation must never lose the user's export
        return proto


def onnx_parity(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    with torch.no_grad():
        ref = model(inputs).numpy()
    return float(np.abs(ours - ref).max())


def write_model_and_report(net: nn.Module, report, paths: tuple[Path, Path], opset: int, *,
                           force: bool = False, plain: bool = False, quantize=None, also=()) -> None:
    """Export `net` to ONNX (its lean form unless `plain`; checked, parity-tested against `net`,
    the report's metadata inside) and the `report.schema.Report` as JSON, published together
    (`files.staged`): neither file appears unless both are complete, and an existing file is
    replaced only with `force`. Sets `report.onnx`, and a note when the lean form was not possible.
    `quantize` (a `deploy.quantize.QuantizeRequest`): the file written is the INT8 form of the
    parity-checked float export, and `report.quantization` says how it was made and measured.
    `also`: more (path, write(temporary path)) outputs published in the same set (`--save-pt`)."""
    onnx_path, json_path = paths
    traced, graph, why = export_form(net, report.input_size, plain)
    if why is not None:
        report.notes.append(f"exported the plain graph: {why}")
    with staged([onnx_path, json_path, *(path for path, _ in also)], force) as (tmp_onnx, tmp_json, *extra):
        for (_, write), tmp in zip(also, extra):
            write(tmp)
        parity = export_onnx(net, tmp_onnx, report.input_size, report.metadata(), opset=opset, traced=traced)
        if quantize is not None:
            _quantize_in_place(tmp_onnx, report, quantize)
        report.onnx = OnnxInfo(path=str(onnx_path), opset=opset, dynamic_batch=True, parity_max_abs_diff=parity,
                               bytes=tmp_onnx.stat().st_size, graph=graph)
        tmp_json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def _quantize_in_place(path: Path, report, request) -> None:
    """Replace the float ONNX file at `path` by its INT8 form (same folder, a temporary name for
    the float file, removed whatever happens), measured against the float file when the request
    has images; stores `report.quantization` and rewrites the metadata."""
    handle, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".float.onnx", dir=path.parent)
    os.close(handle)
    float_path = Path(name)
    try:
        os.replace(path, float_path)
        result = quantize_file(float_path, path, request.scheme, calibration=request.calibration)
        probe = torch.randn(2, *report.input_size, generator=torch.Generator().manual_seed(1))
        result.probe_max_abs_diff = compare_outputs(float_path, path, probe)  # also: the INT8 file runs
        if request.check_images is not None:
            result.evaluation = {**compare(float_path, path, request.check_images, request.check_labels),
                                 "source": request.source}
        if request.calibration is not None:
            result.calibration.update(data=request.data, data_sha256=data_fingerprint(request.data))
        report.quantization = result.to_dict()
        proto = onnx.load(str(path))
        kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        proto.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(report.metadata())))
        onnx.save(proto, str(path))
    finally:
        float_path.unlink(missing_ok=True)
