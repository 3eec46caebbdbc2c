"""Where the time goes: onnxruntime's own profiler, kernel time summed by op type, for ONNX files
side by side, each in a session with `dimap-bench`'s settings (`open_session(tuned=True)`: CPU, all
graph optimisations, sequential, 2 intra-op threads by default), one session at a time.

Each file gets its own session with profiling on; the first `--warmup` runs are dropped and the
per-op-type kernel time of each remaining run is summed, then the median over runs is reported.
The table's last columns are the ratio of the first file's time to each other file's (for a dense
file first and a pruned one second: how much each op type shrank).

    .venv/bin/python -m benchmarks.profile_ops dense.onnx pruned.onnx --batch 1 --runs 20 \\
        --out benchmarks/results/profile_swin_t
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from dimap_struct.deploy.onnx_file import open_session
from dimap_struct.errors import UserError
from dimap_struct.files import atomic_output

from .common import command as recorded_command


def split_runs(events: list[dict], warmup: int) -> tuple[list[dict], list[int], list[tuple[float, float]]]:
    """Kernel ms by op type for each run after the first `warmup`, the kernels each ran, and the
    runs' (start, end) in µs.

    onnxruntime's profile is a Chrome trace: one "model_run" Session event per run and one Node
    event per kernel (op type in args.op_name, provider in args). Its own report
    (onnxruntime.transformers.profile_result_processor) sums over all runs and prints text, so
    the split per run is done here. Kernels outside every kept run are dropped."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")[warmup:]
    per_run: list[dict] = [dict() for _ in spans]
    kernels = [0 for _ in spans]
    starts = [s for s, _ in spans]
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or "provider" not in args or "op_name" not in args or "dur" not in e:
            continue
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if i < 0 or e["ts"] > spans[i][1]:
            continue
        per_run[i][args["op_name"]] = per_run[i].get(args["op_name"], 0) + e["dur"] / 1000
        kernels[i] += 1
    return per_run, kernels, spans


def op_times(path: Path, batch: int, threads: int, runs: int, warmup: int) -> dict:
    """{'ops': {op type: median ms per run}, 'total_ms': median kernel ms per run, 'run_ms': median
    wall ms of a run as the profiler saw it, 'kernels': kernels per run}."""
    with tempfile.TemporaryDirectory() as tmp:
        session = open_session(path, threads, tuned=True, profile_prefix=os.path.join(tmp, "profile"))
        spec = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else batch for d in spec.shape]  # a symbolic axis is the batch
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(warmup + runs):
            session.run(None, {spec.name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run, kernels, spans = split_runs(events, warmup)
    names = sorted({op for run in per_run for op in run})
    ops = {op: statistics.median(run.get(op, 0.0) for run in per_run) for op in names}
    return {"ops": ops, "total_ms": statistics.median(sum(run.values()) for run in per_run),
            "run_ms": statistics.median((end - start) / 1000 for start, end in spans),
            "kernels": int(statistics.median(kernels))}


def table(files: list[Path], results: list[dict], top: int) -> list[str]:
    first = results[0]["ops"]
    order = sorted(first, key=first.get, reverse=True)
    order += sorted({op for r in results[1:] for op in r["ops"]} - set(order))
    head = " | ".join(f"{f.name} ms" for f in files)
    ratios = " | ".join(f"ratio {f.name}" for f in files[1:])
    lines = [f"| op type | {head} | {ratios} |", "|---|" + "---|" * (2 * len(files) - 1)]

    def row(label, values):
        cells = " | ".join(f"{v:.2f}" for v in values)
        ratio = " | ".join(f"{values[0] / v:.2f}" if v > 0 else "-" for v in values[1:])
        return f"| {label} | {cells} | {ratio} |"

    shown = order[:top]
    for op in shown:
        lines.append(row(op, [r["ops"].get(op, 0.0) for r in results]))
    rest = [sum(v for op, v in r["ops"].items() if op not in shown) for r in results]
    lines.append(row("(other op types)", rest))
    matmul = {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul"}
    lines.append(row("**all MatMul/Gemm**", [sum(v for op, v in r["ops"].items() if op in matmul) for r in results]))
    lines.append(row("**everything else**", [sum(v for op, v in r["ops"].items() if op not in matmul)
                                             for r in results]))
    lines.append(row("**total kernel time**", [r["total_ms"] for r in results]))
    lines.append(row("run (profiled wall time)", [r["run_ms"] for r in results]))
    lines.append("| kernels per run | " + " | ".join(str(r["kernels"]) for r in results) + " |" + " |" * (len(files) - 1))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_ops", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("files", type=Path, nargs="+", help="ONNX files; ratios are against the first")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=14, help="op types shown by name (the rest are summed)")
    p.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.batch < 1:
        print("error: --runs and --batch must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"error: no such ONNX file: {', '.join(missing)}", file=sys.stderr)
        return 2
    results = []
    for f in args.files:
        try:
            results.append(op_times(f, args.batch, args.threads, args.runs, args.warmup))
        except UserError as err:  # a file onnxruntime cannot read
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{f.name}: {results[-1]['total_ms']:.1f} ms kernel time per run", file=sys.stderr, flush=True)
    lines = table(args.files, results, args.top)
    command = recorded_command("profile_ops", argv)
    print("\n".join(lines))
    if args.out:
        with atomic_output(args.out.with_suffix(".md")) as tmp:
            tmp.write_text(f"`{command}` (batch {args.batch}, {args.threads} threads, median of {args.runs} runs "
                           f"after {args.warmup} warm-up; onnxruntime's profiler, kernel time by op type)\n\n"
                           + "\n".join(lines) + "\n")
        with atomic_output(args.out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"command": command, "batch": args.batch, "threads": args.threads,
                                       "files": [str(f) for f in args.files], "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
