"""`dimap-bench`: onnxruntime latency of ONNX models side by side, against the MACs they promise.

Prints one table row per batch size and model (median, p10, p90 latency, images/s, speed-up
against the first model, ideal speed-up from the MACs in the metadata, efficiency). Optional
outputs (--md, --json-out, --plot) appear atomically; an existing one is kept unless --force.
User errors print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..options import BenchOptions
from .common import Parser, add_common_flags, add_config_flag, main_of

EPILOG = """\
examples:
  dimap-bench dense.onnx half.onnx                      # batch 1 and 8, 2 threads
  dimap-bench dense.onnx half.onnx --batch 1 32 --threads 8 --min-time 10 --md bench.md

The first model is the baseline of the speed-up. Models run interleaved (A B A B ...), so a
noisy machine slows all of them alike; the ideal speed-up is the ratio of the MACs that
dimap-compress stores in each file's metadata, and efficiency = speed-up / ideal.
"""
COLUMNS = ("model", "batch", "median ms", "p10 ms", "p90 ms", "img/s", "speed-up", "ideal", "efficiency", "runs")


def build_parser() -> argparse.ArgumentParser:
    p = Parser("dimap-bench", "Latency of ONNX models in onnxruntime, timed interleaved, with speed-up "
               "against the MACs they promise.", EPILOG)
    BenchOptions.add_flags(p)
    add_config_flag(p)
    o = next(g for g in p._action_groups if g.title == "output")
    o.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    add_common_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return main_of("dimap-bench", build_parser, _run, argv)


def _run(args: argparse.Namespace) -> int:
    # deferred (also below): start-up; --help and bad flags load neither onnxruntime nor rich
    from rich.console import Console

    from ..deploy.bench import benchmark, benchmark_torch, torch_models_for

    options = BenchOptions.from_args(args, args.config)
    if not options.models:
        raise UserError("give one or more ONNX files; the first is the baseline")
    _check_outputs(options, (*options.models, *([args.config] if args.config else [])))
    if options.plot:
        _check_plottable(options.models)
    timing = dict(batches=options.batch, threads=options.threads, warmup=options.warmup,
                  min_iters=options.min_iters, min_time=options.min_time)
    runtimes = dict(runtimes=options.runtime)
    if options.torch:  # rebuild before timing anything, so a file without the metadata fails at once
        modules, macs, input_size = torch_models_for(options.models)
    with _progress(Console(stderr=True), options.models, args.quiet, options.runtime) as on_run:
        result = benchmark(options.models, on_run=on_run, **timing, **runtimes)
    if options.torch:
        with _progress(Console(stderr=True), options.models, args.quiet) as on_run:
            result["torch"] = benchmark_torch(modules, input_size, macs=macs, on_run=on_run, **timing)
    result["package_version"] = __version__
    result["recipe"] = options.recipe()
    _write_outputs(options, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        console = Console()
        _print_table(result, console)
        if options.torch:
            _print_table(result["torch"], console)
    return 0


def _check_outputs(options: BenchOptions, inputs) -> None:
    """Fail before timing anything if an output cannot be written or is one of the `inputs`
    (each output's extension differs, so no two outputs can be one file)."""
    from ..files import check_output  # deferred: start-up (tempfile, threading), as in cli.common

    for flag, path, suffixes in (("--md", options.md, (".md",)), ("--json-out", options.json_out, (".json",)),
                                 ("--plot", options.plot, (".png",))):
        if path is not None:
            check_output(path, options.force, suffixes, flag, inputs)


def _check_plottable(paths: list[str]) -> None:
    """--plot places models by their MACs: every readable file must carry them. Missing or
    unreadable files are left to `benchmark`, which reports them."""
    # deferred: start-up, as in _run
    from ..deploy.bench import model_macs
    from ..deploy.onnx_file import read_report

    for path in paths:
        try:
            report = read_report(path)
        except UserError:
            continue
        if model_macs(report)[0] is None:
            raise UserError(f"--plot places models by their MACs, and {path} has none in its metadata")


class _progress:
    """Context manager yielding an `on_run` callback that drives a rich progress bar on stderr."""

    def __init__(self, console, paths, quiet: bool, runtimes=("onnxruntime",)):
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeElapsedColumn  # deferred: as in _run

        self.names = [Path(p).name if list(runtimes) == ["onnxruntime"] else f"{Path(p).name} ({rt})"
                      for p in paths for rt in runtimes]
        self.bar = Progress("[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
                            TimeElapsedColumn(), console=console, disable=quiet, transient=True)
        self.tasks: dict[int, int] = {}

    def __enter__(self):
        self.bar.__enter__()
        return self.update

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def update(self, run) -> None:
        if run.batch not in self.tasks:
            self.tasks[run.batch] = self.bar.add_task("", total=1.0)
        label = (f"batch {run.batch}: warming up {self.names[run.index]}" if run.phase == "warmup"
                 else f"batch {run.batch}: timing {len(self.names)} model(s) in turn")
        self.bar.update(self.tasks[run.batch], description=label, completed=run.done)


def _cells(row: dict) -> list[str]:
    ms = lambda v: f"{v:.2f}" if v >= 1 else f"{v:.3f}"  # noqa: E731
    ideal, eff = row["ideal_speedup"], row["efficiency"]
    return [row["model"], str(row["batch"]), ms(row["median_ms"]), ms(row["p10_ms"]), ms(row["p90_ms"]),
            f"{row['images_per_s']:,.1f}", f"{row['speedup']:.2f}x", "?" if ideal is None else f"{ideal:.2f}x",
            "?" if eff is None else f"{eff:.0%}", str(row["iterations"])]


def _headline(result: dict) -> str:
    m = result["machine"]
    if "runtimes" in result:
        parts = []
        for runtime, version in result["runtimes"].items():
            parts.append(f"onnxruntime {version}, {result['provider']}, {result['threads']} intra-op threads "
                         "(inter-op 1, sequential, ORT_ENABLE_ALL)" if runtime == "onnxruntime" else
                         f"OpenVINO {version}, CPU, {result['threads']} inference threads (latency hint, 1 stream, f32 "
                         "precision)")
        engine = " and ".join(parts)
    elif result["framework"] == "onnxruntime":  # results written before OpenVINO was added
        engine = (f"onnxruntime {result['onnxruntime']}, {result['provider']}, {result['threads']} intra-op threads "
                  "(inter-op 1, sequential, ORT_ENABLE_ALL)")
    else:
        engine = (f"PyTorch {result['torch']} eager, CPU, {result['threads']} threads, inference mode, "
                  "modules rebuilt from the metadata with random weights")
    return (f"{engine}; input {'x'.join(map(str, result['input_shape']))} random float32; {result['schedule']}; "
            f"{m['platform']}, {m['usable_cpus']} of {m['cpu_count']} CPUs usable; {result['date']}")


def _print_table(result: dict, console) -> None:
    # deferred: start-up, as in _run
    from rich import box
    from rich.table import Table

    table = Table(*COLUMNS, title=f"dimap-bench: {result['framework']}", box=box.SIMPLE_HEAD)
    for col in table.columns:
        col.no_wrap = True
        col.justify = "left" if col.header == "model" else "right"
    rows = result["rows"]
    for i, row in enumerate(rows):
        if i and row["batch"] != rows[i - 1]["batch"]:
            table.add_section()
        table.add_row(*_cells(row))
    if not console.is_terminal:  # a file or pipe: no reason to squeeze the table into 80 columns
        wide = console.options.update_width(1000)
        console.width = max(console.width, console.measure(table, options=wide).maximum)
    console.print(table)
    console.print(_headline(result), highlight=False)
    for note in result["notes"]:
        console.print(f"note: {note}", highlight=False)


def markdown(result: dict, level: int = 1) -> str:
    """The result as a Markdown section: headline, table, notes (and the --torch section)."""
    lines = [f"{'#' * level} dimap-bench: {result['framework']}", "", _headline(result), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in result["rows"]]
    lines += [""] + [f"- note: {n}" for n in result["notes"]]
    text = "\n".join(lines).rstrip() + "\n"
    return text + "\n" + markdown(result["torch"], level + 1) if "torch" in result else text


def plot(result: dict, path) -> None:
    """Median latency (p10-p90 error bars) against MACs, one panel per batch size; the dashed
    line is latency proportional to MACs through the first model (the ideal)."""
    # deferred: start-up (matplotlib takes about 1 s), loaded only for --plot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = result["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in result["rows"] if r["batch"] == batch and r["macs"]]
        x = [r["macs"] / 1e9 for r in rows]
        y = [r["median_ms"] for r in rows]
        err = [[r["median_ms"] - r["p10_ms"] for r in rows], [r["p90_ms"] - r["median_ms"] for r in rows]]
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=4)
        for r, xi, yi in zip(rows, x, y):
            ax.annotate(r["model"], (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if rows:
            ax.plot([0, max(x)], [0, y[0] * max(x) / x[0]], ls="--", color="grey", lw=0.8,
                    label="latency proportional to MACs")
            ax.legend(fontsize=8, loc="upper left")
        ax.set(title=f"batch {batch}", xlabel="MACs per image (G)", ylabel="median latency (ms)",
               xlim=(0, 1.2 * max(x, default=1)), ylim=(0, None))
        ax.grid(alpha=0.3)
    fig.suptitle(f"onnxruntime {result['onnxruntime']}, {result['provider']}, {result['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _write_outputs(options: BenchOptions, result: dict) -> None:
    from ..files import staged  # deferred: start-up (tempfile, threading), as in cli.common

    writers = [(path, write) for path, write in (
        (options.md, lambda tmp: tmp.write_text(markdown(result))),
        (options.json_out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n")),
        (options.plot, lambda tmp: plot(result, tmp))) if path is not None]
    with staged([path for path, _ in writers], options.force) as temps:  # all of them or none
        for (_, write), tmp in zip(writers, temps):
            write(tmp)


if __name__ == "__main__":
    sys.exit(main())
