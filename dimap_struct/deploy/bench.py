"""Latency of ONNX models in onnxruntime, measured side by side (the library behind `dimap-bench`).

Contract of `benchmark` and `benchmark_torch`:
- every model sees the same seeded random float32 batch of its input shape, per batch size;
- each model is warmed up on its own, then the models are timed INTERLEAVED: one run of each in
  turn (A B A B ...), so slow drift of a shared machine hits all of them alike, and every model
  ends with the same number of runs;
- timing stops once every model has at least `min_iters` runs and at least `min_time` seconds of
  measured runs (or after `max_iters` rounds, whichever comes first);
- per model and batch: median, p10 and p90 latency in ms, images/s (batch / median), speed-up
  against the first model (its median / this median), the ideal speed-up promised by the MACs
  (first model's MACs / this model's MACs) and the efficiency (speed-up / ideal). Ideal and
  efficiency are None where the MACs of either model are unknown, with a note saying so.
Files that are missing or unreadable, or whose inputs disagree, raise UserError (one line), and
so does a batch size that cannot fit in the memory available (`check_memory`), before any timing.
"""
from __future__ import annotations

import datetime
import gc
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import UserError
from .onnx_file import open_session, read_report
from .runtimes import open_runner, runtime_version

WARMUP_MIN_RUNS = 2
SEED = 0
SCHEDULE = "interleaved: one run of each model in turn, same number of runs per model"


@dataclass(frozen=True)
class Run:
    """One finished run, passed to `on_run`: which model (index into the list), at which batch,
    in which phase ('warmup' or 'measure'), and the fraction of that batch's measurement done."""
    batch: int
    index: int
    phase: str
    done: float


@dataclass
class _Model:
    name: str
    path: str
    runner: Callable[[np.ndarray], object]
    macs: int | None = None
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def model_macs(report) -> tuple[int | None, str | None]:
    """MACs one inference of a model costs at run time, from its stored report, and a note when
    that is not its pruned MACs (weight granularity: the file is dense with zeros)."""
    if report is None:
        return None, "no dimap_struct metadata: MACs and ideal speed-up unknown"
    if report.granularity == "weight":
        return report.runtime_macs, ("weight granularity: the file is dense with zeros, so it runs at the "
                                     "original MACs, not its effective MACs")
    return report.runtime_macs, None


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def benchmark(paths: Sequence[str | os.PathLike], batches: Sequence[int] = (1, 8), threads: int = 2,
              warmup: float = 1.0, min_iters: int = 20, min_time: float = 3.0, max_iters: int = 10_000,
              providers: Sequence[str] | None = None, runtimes: Sequence[str] = ("onnxruntime",),
              on_run: Callable[[Run], None] | None = None) -> dict:
    """Time the ONNX files `paths` at each batch size in each of `runtimes` (onnxruntime,
    openvino: `deploy.runtimes`); every (file, runtime) pair is one model of the interleaved
    schedule, labelled "file (runtime)" when more than onnxruntime is timed; see the module
    docstring. `warmup` and `min_time` are seconds per model and batch; `threads` is the
    intra-op thread count (onnxruntime: inter-op 1, sequential execution, all graph
    optimisations). Returns the result dict (`rows`: one per batch and model, batch-major)."""
    _check_settings(batches, threads, warmup, min_iters, min_time)
    if not paths:
        raise UserError("no model given")
    runtimes = list(dict.fromkeys(runtimes)) or ["onnxruntime"]
    versions = {rt: runtime_version(rt) for rt in runtimes}  # a missing runtime fails before any timing
    providers = list(providers or default_providers())
    models, shape = _open_onnx(paths, batches, threads, providers, runtimes)
    check_memory([m.path for m in models], shape, max(batches))
    result = _run_all(models, shape, batches, warmup, min_iters, min_time, max_iters, on_run)
    result.update(framework=" + ".join(runtimes), onnxruntime=ort.__version__, runtimes=versions,
                  provider=models[0].info["provider"], providers=providers,
                  threads=threads, inter_op_threads=1, graph_optimization="ORT_ENABLE_ALL", execution="sequential")
    return result


def benchmark_torch(modules: dict, input_size: Sequence[int], batches: Sequence[int] = (1, 8), threads: int = 2,
                    warmup: float = 1.0, min_iters: int = 20, min_time: float = 3.0, max_iters: int = 10_000,
                    macs: dict | None = None, on_run: Callable[[Run], None] | None = None) -> dict:
    """Time PyTorch eager modules (name -> nn.Module, put in eval mode) on CPU under
    `torch.inference_mode` with `threads` intra-op threads, same schedule and statistics as
    `benchmark`. `input_size` is (C, H, W); `macs` (name -> MACs) enables the ideal speed-up.
    torch's thread count is restored afterwards."""
    import torch  # deferred: start-up; dimap-bench of ONNX files runs without loading torch

    _check_settings(batches, threads, warmup, min_iters, min_time)
    if not modules:
        raise UserError("no module given")
    macs = macs or {}
    models = []
    for name, module in modules.items():
        module.eval()

        def run(x, module=module):
            with torch.inference_mode():
                return module(x)

        m = _Model(name, "", run, macs.get(name))
        if m.macs is None:
            m.notes.append("no MACs given: ideal speed-up unknown")
        models.append(m)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = _run_all(models, tuple(input_size), batches, warmup, min_iters, min_time, max_iters, on_run,
                          to_input=torch.from_numpy)
    finally:
        torch.set_num_threads(before)
    result.update(framework="pytorch eager", torch=torch.__version__, provider="cpu", threads=threads)
    return result


def torch_models_for(paths: Sequence[str | os.PathLike]) -> tuple[dict, dict, tuple[int, ...]]:
    """The PyTorch module behind each ONNX file, rebuilt from the architecture its stored report
    records (`prune.replay.build_architecture`) with random weights, which latency does not depend
    on. Returns (label -> module, label -> MACs, common input size (C, H, W)); labels as in
    `benchmark`. UserError for files without a report or with differing inputs."""
    from ..prune.replay import build_architecture  # deferred: start-up (torch, timm), for --torch only

    names = [Path(p).name for p in paths]
    modules, macs, size = {}, {}, None
    for path, name in zip(paths, names):
        report = read_report(path)
        if report is None:
            raise UserError(f"--torch rebuilds each model from its metadata, and {path} records no architecture "
                            "(export it with dimap-compress)")
        label = name if names.count(name) == 1 else str(path)
        modules[label] = build_architecture(report.architecture)
        macs[label] = model_macs(report)[0]
        dims = report.input_size
        if size is not None and dims != size:
            raise UserError(f"conflicting input shapes: {names[0]} expects {_fmt(size)}, {name} {_fmt(dims)}")
        size = dims
    return modules, macs, size


def _check_settings(batches, threads, warmup, min_iters, min_time) -> None:
    if not batches or any(int(b) != b or b < 1 for b in batches):
        raise UserError(f"batch sizes must be positive integers, got {list(batches)}")
    if threads < 1:
        raise UserError(f"threads must be at least 1, got {threads}")
    if warmup < 0 or min_time < 0 or min_iters < 1:
        raise UserError("warm-up and minimum time must be >= 0 and minimum iterations >= 1")


def _open_onnx(paths, batches, threads, providers, runtimes=("onnxruntime",)) -> tuple[list[_Model], tuple[int, ...]]:
    """Open every file in every runtime (UserError for missing, unreadable or mismatched ones)
    and return the models, file-major, with their common input shape without the batch axis."""
    names = [Path(p).name for p in paths]
    models, shape, first = [], None, None
    for path, name in zip(paths, names):
        path = Path(path)
        report = read_report(path)
        session = open_session(path, threads, providers, tuned=True)
        dims = _input_dims(session, report, path, batches)
        if shape is None:
            shape, first = dims, path.name
        elif dims != shape:
            raise UserError(f"conflicting input shapes: {first} expects {_fmt(shape)}, {path.name} {_fmt(dims)}")
        label = name if names.count(name) == 1 else str(path)
        for runtime in runtimes:
            if runtime == "onnxruntime":
                input_name = session.get_inputs()[0].name
                runner = lambda x, s=session, n=input_name: s.run(None, {n: x})  # noqa: E731
                info = {"runtime": runtime, "provider": session.get_providers()[0]}
            else:
                runner, info = open_runner(path, runtime, threads)
            shown = label if list(runtimes) == ["onnxruntime"] else f"{label} ({runtime})"
            m = _Model(shown, str(path), runner)
            m.macs, note = model_macs(report)
            m.notes += [note] if note else []
            if report is not None and report.quantization:
                m.notes.append(f"{report.quantization['scheme']}: MACs counted as in the float model")
            m.info = {**info, "source_model": report.source.model if report else None,
                      "granularity": report.granularity if report else None,
                      "quantization": report.quantization["scheme"] if report and report.quantization else None}
            models.append(m)
    return models, shape


def _input_dims(session, report, path: Path, batches) -> tuple[int, ...]:
    """The input shape without the batch axis; dynamic dims are taken from the metadata."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; dimap-bench times single-input image models")
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise UserError(f"{path} takes {inp.type}; dimap-bench feeds float32 images")
    batch_dim, dims = inp.shape[0] if inp.shape else None, list(inp.shape[1:])
    if isinstance(batch_dim, int) and any(b != batch_dim for b in batches):
        raise UserError(f"{path} has a fixed batch size of {batch_dim}; other batch sizes need a dynamic batch axis")
    if not dims or not all(isinstance(d, int) for d in dims):
        size = report.input_size if report is not None else None
        if not size or len(size) != len(dims):
            raise UserError(f"{path} has a dynamic input shape {inp.shape} and no input size in its metadata")
        dims = [d if isinstance(d, int) else s for d, s in zip(dims, size)]
    return tuple(int(d) for d in dims)


def check_memory(paths: Sequence[str | os.PathLike], shape, batch: int) -> None:
    """UserError (one line) when `batch` images cannot fit in the memory available (`available_memory`)
    for one of `paths`: at least `batch` times its `bytes_per_image`. Nothing is checked where the
    available memory cannot be read. Before this, an absurd --batch ran into the OOM killer."""
    available = available_memory()
    if available is None:
        return
    per_image = {str(p): bytes_per_image(p, shape) for p in dict.fromkeys(paths)}
    path, need = max(per_image.items(), key=lambda item: item[1])
    if need * batch > available:
        raise UserError(f"--batch {batch} needs at least {_size(need * batch)} for {Path(path).name} (about "
                        f"{_size(need)} per image); this machine has {_size(available)} available")


def bytes_per_image(path: str | os.PathLike, shape) -> int:
    """A lower bound of the memory each image of a batch keeps live while the ONNX model `path`
    runs: its float32 input (`shape`, without the batch axis) plus the largest tensor computed from
    it, both live while that tensor is made. Shapes come from onnx shape inference at batch 1;
    tensors it cannot size, and those that do not depend on the input (weights, constants), are
    left out, so the bound never refuses a batch that fits."""
    model = onnx.load(str(path), load_external_data=False)  # shapes need no weight data
    weights = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in weights)
    _weights_as_inputs(model.graph)
    dims = graph_input.type.tensor_type.shape.dim
    for dim, size in zip(dims, (1, *shape)):
        dim.dim_value = size  # also clears a symbolic dim_param, as they share a oneof
    input_bytes = 4 * int(np.prod(shape))
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return input_bytes  # a lower bound still: the input alone
    made = _made_from(model.graph, graph_input.name)
    sized = [_tensor_bytes(v) for v in (*model.graph.value_info, *model.graph.output) if v.name in made]
    return input_bytes + max(sized, default=0)


def _weights_as_inputs(graph, largest: int = 1024) -> None:
    """Turn every initializer of more than `largest` elements into a graph input of its type and
    shape. Shape inference then copies no weight data (0.03 s instead of 0.7 s on swin_t); the small
    ones stay, as Reshape targets need their values."""
    small = []
    for tensor in graph.initializer:
        if int(np.prod(tensor.dims)) > largest:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            small.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(small)


def _made_from(graph, name: str) -> set[str]:
    """Names of the tensors of `graph` computed from the tensor `name` (nodes are in topological order)."""
    made = {name}
    for node in graph.node:
        if any(i in made for i in node.input):
            made.update(o for o in node.output if o)
    made.discard(name)
    return made


def _tensor_bytes(value) -> int:
    """Bytes of a tensor ValueInfo whose every dimension is known, else 0."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return 0
    if any(not d.HasField("dim_value") for d in tensor.shape.dim):
        return 0
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
    except (KeyError, TypeError):  # an undefined or exotic element type
        return 0
    return itemsize * int(np.prod([d.dim_value for d in tensor.shape.dim]))


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable from /proc/meminfo, lowered to what a
    cgroup v2 memory limit leaves (in a container MemAvailable shows the host's); None where
    /proc/meminfo cannot be read."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        available = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def _size(count: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} bytes"


def _fmt(shape) -> str:
    return "x".join(str(d) for d in shape)


def _run_all(models: list[_Model], shape, batches, warmup, min_iters, min_time, max_iters, on_run,
             to_input=lambda a: a) -> dict:
    rows, iterations = [], {}
    for batch in batches:
        x = to_input(np.random.default_rng(SEED).standard_normal((batch, *shape), dtype=np.float32))
        runners = [lambda m=m, x=x: m.runner(x) for m in models]
        gc.collect()
        times = time_batch(runners, batch, warmup, min_iters, min_time, max_iters, on_run)
        iterations[str(batch)] = len(times[0])
        rows += _rows(models, batch, times)
    notes = _notes(models)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(),
        "input_shape": list(shape),
        "batches": [int(b) for b in batches],
        "warmup_s": warmup, "min_iters": min_iters, "min_time_s": min_time, "max_iters": max_iters,
        "schedule": SCHEDULE,
        "iterations": iterations,
        "models": [{"name": m.name, "path": m.path, "macs": m.macs, "notes": m.notes, **m.info} for m in models],
        "rows": rows,
        "notes": notes,
    }


def time_batch(runners, batch, warmup, min_iters, min_time, max_iters, on_run) -> list[list[float]]:
    """Warm each runner up on its own, then time them in turn; seconds per run, per runner
    (`latency_probe` times its blocks with it too)."""
    notify = on_run or (lambda run: None)
    for i, run in enumerate(runners):
        start, n = time.perf_counter(), 0
        while n < WARMUP_MIN_RUNS or time.perf_counter() - start < warmup:
            run()
            n += 1
            notify(Run(batch, i, "warmup", 0.0))
    times = [[] for _ in runners]
    spent = [0.0] * len(runners)
    rounds = 0
    while rounds < max_iters and (rounds < min_iters or min(spent) < min_time):
        for i, run in enumerate(runners):
            t0 = time.perf_counter()
            run()
            dt = time.perf_counter() - t0
            times[i].append(dt)
            spent[i] += dt
            done = min(1.0, (rounds + 1) / min_iters, min(spent) / min_time if min_time else 1.0)
            notify(Run(batch, i, "measure", done))
        rounds += 1
    return times


def _rows(models: list[_Model], batch: int, times: list[list[float]]) -> list[dict]:
    rows = []
    for m, t in zip(models, times):
        p10, median, p90 = (float(v) * 1e3 for v in np.percentile(t, [10, 50, 90]))
        rows.append({"model": m.name, "batch": batch, "iterations": len(t), "median_ms": median,
                     "p10_ms": p10, "p90_ms": p90, "images_per_s": batch / (median / 1e3), "macs": m.macs})
    base, base_macs = rows[0]["median_ms"], models[0].macs
    for row, m in zip(rows, models):
        row["speedup"] = base / row["median_ms"]
        ideal = base_macs / m.macs if base_macs and m.macs else None
        row["ideal_speedup"] = ideal
        row["efficiency"] = row["speedup"] / ideal if ideal else None
    return rows


def _notes(models: list[_Model]) -> list[str]:
    notes = [f"{m.name}: {n}" for m in models for n in m.notes]
    if models[0].macs is None and len(models) > 1:
        notes.append(f"ideal speed-up unknown for every model: the baseline {models[0].name} has no MACs")
    return notes


def machine_record() -> dict:
    """The machine the timings ran on: platform, processor, Python, CPUs (all and usable)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "usable_cpus": usable}
