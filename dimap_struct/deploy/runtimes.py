"""CPU runtimes for exported ONNX files: onnxruntime (always installed) and OpenVINO (optional,
`pip install openvino`). Each opens a file as a runner: float32 batch (B, C, H, W) -> logits.

OpenVINO compiles one network per batch size (a static shape is what its CPU plugin runs
fastest), on first use of that size, with the latency hint, one stream, `threads` inference
threads and float32 precision (so that a float export is timed in float32, as in onnxruntime;
an INT8 QDQ file still runs its int8 kernels).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime

from ..errors import UserError
from .choices import RUNTIMES
from .onnx_file import check_file, open_session

Runner = Callable[[np.ndarray], np.ndarray]


def runtime_version(runtime: str) -> str:
    if runtime == "openvino":
        return _openvino().__version__

    return onnxruntime.__version__


def open_runner(path: str | os.PathLike, runtime: str, threads: int | None = None, *,
                tuned: bool = False) -> tuple[Runner, dict]:
    """(runner, info) for `path` in `runtime`; info names the device or provider. `tuned`:
    the benchmark's onnxruntime settings (`onnx_file.open_session`). UserError for unknown
    runtimes, a missing OpenVINO, or files the runtime cannot read."""
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime '{runtime}'; choose from: {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        return _openvino_runner(Path(path), threads)

    session = open_session(path, threads, tuned=tuned)
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), {"runtime": "onnxruntime",
                                                         "provider": session.get_providers()[0]}


def _openvino():
    try:  # deferred: an optional dependency (the openvino extra), loaded only for --runtime openvino
        import openvino
    except ImportError:
        raise UserError("--runtime openvino: OpenVINO is not installed; install it with "
                        "pip install 'dimap-struct[openvino]' (or pip install openvino)") from None
    return openvino


def _openvino_runner(path: Path, threads: int | None) -> tuple[Runner, dict]:
    ov = _openvino()

    check_file(path)
    core = ov.Core()
    try:
        network = core.read_model(str(path))
    except Exception as err:  # OpenVINO raises RuntimeError subclasses of its own
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"OpenVINO cannot read {path}: {first[:160]}") from err
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    shape = network.input(0).get_partial_shape()
    compiled: dict[int, object] = {}

    def run(x: np.ndarray) -> np.ndarray:
        request = compiled.get(x.shape[0])
        if request is None:
            net = network.clone()
            if shape.is_dynamic:
                net.reshape({net.input(0): ov.PartialShape(list(x.shape))})
            try:
                request = core.compile_model(net, "CPU", config).create_infer_request()
            except Exception as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"OpenVINO cannot compile {path.name}: {first[:160]}") from err
            compiled[x.shape[0]] = request
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return run, {"runtime": "openvino", "provider": "CPU"}
