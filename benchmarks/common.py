"""What several benchmarks share: where results and the project's data live, the ONNX exports
and interleaved timing runs of the speed benchmarks (latency, speed_by_criterion), the lookup of
a row in such a run (also decide.py's), its Markdown table, and how a run's command is recorded.

dimap_struct is imported inside the functions, so that a script that only reads results
(decide.py) or only prints its --help does not load torch.
"""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (the benchmarks run from it: `python -m benchmarks.<name>`)."""
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"
"""The project's data beside the checkout (MNIST's IDX files, CIFAR-10 as image folders); every
script that reads data also takes a flag for another directory."""
MNIST = SHARED_DATA / "mnist"
CIFAR10 = SHARED_DATA / "cifar10"
REFERENCE_DATA = {"reference-mnist": MNIST, "reference-cifar10": CIFAR10}
"""The data set each built-in reference model was trained on (accuracy, recovery_curve: `--model`)."""


def command(module: str, argv: list[str] | None = None) -> str:
    """How this run was started, as recorded in its results: `python -m benchmarks.<module> ARGS`."""
    return " ".join(["python -m benchmarks." + module, *(sys.argv[1:] if argv is None else argv)])


def row(result: dict, name: str, batch: int, runtime: str = "onnxruntime") -> dict | None:
    """The row of file `name` at `batch` in a `deploy.bench.benchmark` result (in `runtime` when the
    run timed several); None if there is none."""
    for r in result["rows"]:
        label = r["model"]
        if r["batch"] == batch and (label == name or label == f"{name} ({runtime})"):
            return r
    return None


def export(loaded, path: Path, budget=None, **options) -> Path:
    """`compress(loaded, budget, output=path, **options)`, overwriting; returns `path`."""
    from dimap_struct import compress

    compress(loaded, budget, output=path, force=True, **options)
    return path


def timing_arguments(parser, warmup: float = 0.5, min_iters: int = 20) -> None:
    """The flags `timed` reads: --batches, --threads, --warmup, --min-iters, --min-time, --runtimes."""
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=warmup)
    parser.add_argument("--min-iters", type=int, default=min_iters)
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime"], help="onnxruntime and/or openvino")


def timed(paths: list[Path], args) -> dict:
    """One interleaved `deploy.bench.benchmark` run of `paths` with the timing flags in `args`."""
    from dimap_struct.deploy.bench import benchmark

    return benchmark([str(p) for p in paths], batches=args.batches, threads=args.threads, warmup=args.warmup,
                     min_iters=args.min_iters, min_time=args.min_time, runtimes=args.runtimes)


def table(result: dict, title: str) -> list[str]:
    """A benchmark run as a Markdown table under `### title`."""
    lines = [f"### {title}", "", "| model | batch | median ms | p10 | p90 | img/s | speed-up | ideal | efficiency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-"
        ideal = f"{r['ideal_speedup']:.2f}x" if r["ideal_speedup"] is not None else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['images_per_s']:.1f} | {r['speedup']:.2f}x | {ideal} | {eff} |")
    return lines + [""]


@contextlib.contextmanager
def work_folder(keep: Path | None):
    """`keep` (created if missing) when given, else a temporary folder removed afterwards."""
    if keep is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
    else:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep


def large_vs_small_files(folder: Path, loaded: dict, small: Path, small_written: bool,
                         pruned: dict[str, str]) -> list[Path]:
    """Dense swin_t's lean export `small` (exported here unless `small_written`: this run already
    wrote it) and swin_s pruned to its MACs, one file per {file name: criterion}. `loaded` caches
    models by name (random weights)."""
    from dimap_struct import load_model
    from dimap_struct.deploy.onnx_file import read_report

    for name in ("swin_t", "swin_s"):
        if name not in loaded:
            loaded[name] = load_model(name, pretrained=False)
    files = [small if small_written else export(loaded["swin_t"], small, 1.0)]
    budget = f"{read_report(small).original.macs / 1e9:.4f}G"
    return files + [export(loaded["swin_s"], folder / file, budget, criterion=c) for file, c in pruned.items()]


def write_json(results: dict, out: str, start: float) -> Path:
    """Record the wall time since `start` in `results` and write OUT.json; returns OUT as a Path."""
    results["wall_s"] = time.perf_counter() - start
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path
