"""Opening ONNX files, in one place: an onnxruntime session and the report stored in the file's
metadata, with one-line user errors for missing or unreadable files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import onnxruntime as ort

from ..errors import UserError
from ..files import check_input
from ..report.schema import Report

METADATA_KEY = "dimap_struct"
"""ONNX metadata key under which dimap-compress stores the report (`Report.metadata`)."""


def check_file(path: Path) -> None:
    """UserError unless `path` is an existing, readable model file (`files.check_input`)."""
    check_input(path, "model file")


def _unreadable(path: Path, err: Exception) -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"cannot read ONNX model {path}: {first[:160]}")


def read_report(path: str | os.PathLike):
    """The `report.schema.Report` stored in an ONNX file, or None if it holds none. UserError
    for a missing or unreadable file, or a report of another format."""
    path = Path(path)
    check_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises its own types (protobuf DecodeError, ...)
        raise _unreadable(path, err) from err
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return Report.from_dict(json.loads(prop.value))
            except UserError:
                raise
            except (ValueError, TypeError, KeyError, AttributeError):  # JSON of another shape
                raise UserError(f"{path}: its dimap_struct metadata was not written by dimap-struct, or is "
                                "damaged") from None
    return None


def open_session(path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None,
                 tuned: bool = False, profile_prefix: str | None = None):
    """An onnxruntime InferenceSession of `path` (CPU unless `providers` say otherwise).
    `threads`: intra-op threads; `tuned`: the benchmark's settings (inter-op 1, sequential
    execution, all graph optimisations, warnings off stderr, worker threads that stop spinning
    when a run returns); `profile_prefix`: onnxruntime's profiler on, its trace file named so."""
    path = Path(path)
    check_file(path)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if tuned:
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Interleaved timing keeps several sessions in one process. onnxruntime's workers spin on
        # after a run by default, so the idle sessions' threads took the 2 cores from the next
        # model's run: about +20 ms on every swin_t run at batch 1, which shrank every speed-up.
        # Stopping the spin when a run returns costs a lone session nothing measurable.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
        options.log_severity_level = 4  # a failed load also logs "could not write a profile"; the error says it all
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for unreadable files
        raise _unreadable(path, err) from err


def output_width(path: str | os.PathLike) -> int | None:
    """The static last dimension of the file's first output (the classes), None if dynamic."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise _unreadable(Path(path), err) from err
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
