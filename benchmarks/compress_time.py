"""Wall time and peak memory of `dimap-compress` end to end (issue 2's speed/memory goal).

Runs the installed CLI as a child process several times and reports the median wall time (with
`--latency`: the first run's and the median of the others, apart) and the peak resident set size
(ru_maxrss of the child; each repeat runs in a fresh process, so a repeat's peak is its own).
Writes benchmarks/results/compress_time.{json,md}.

    .venv/bin/python -m benchmarks.compress_time                 # swin_b, R = 0.5, 3 repeats
    .venv/bin/python -m benchmarks.compress_time --model swin_large_patch4_window12_384 --repeats 1
    .venv/bin/python -m benchmarks.compress_time --latency 0.5   # first run: an empty latency cache

With `--latency R`, the runs share a fresh, empty latency cache ($DIMAP_CACHE in a temporary
folder): the first run measures the table, the later ones read it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import RESULTS


def run_once(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of one child process running `cmd`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if not os.WIFEXITED(_) or os.WEXITSTATUS(_) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compress_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="swin_b")
    p.add_argument("--flops", default="0.5")
    p.add_argument("--latency", default=None, help="a --latency R budget instead of --flops (cold cache first)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/results")
    args = p.parse_args()

    exe = shutil.which("dimap-compress", path=str(Path(sys.executable).parent)) or "dimap-compress"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.onnx"
        budget = ["--flops", args.flops] if args.latency is None else ["--latency", args.latency]
        cmd = [exe, args.model, "--no-pretrained", *budget, "-o", str(out), "--force", "--quiet"]
        shown = f"dimap-compress {args.model} --no-pretrained {' '.join(budget)} -o out.onnx"
        env = None if args.latency is None else dict(os.environ, DIMAP_CACHE=str(Path(tmp) / "cache"))
        for i in range(args.repeats):
            wall, rss = run_once(cmd, env)
            rows.append({"wall_s": round(wall, 2), "peak_rss_gib": round(rss, 3),
                         **({} if env is None else {"latency_cache": "empty" if i == 0 else "filled"})})
            print(f"run {i + 1}/{args.repeats}: {wall:.1f} s, peak RSS {rss:.2f} GiB", flush=True)
        report = json.loads(out.with_suffix(".json").read_text())

    summary = {
        "command": shown,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "repeats": rows,
        # with --latency the first run measures the table and the others read it: two figures,
        # never one median over both
        **({"median_wall_s": round(statistics.median(r["wall_s"] for r in rows), 2)} if args.latency is None else
           {"cold_wall_s": rows[0]["wall_s"],
            "cached_median_wall_s": round(statistics.median(r["wall_s"] for r in rows[1:]), 2) if len(rows) > 1
            else None}),
        "max_peak_rss_gib": round(max(r["peak_rss_gib"] for r in rows), 3),
        "achieved_ratio": report["achieved"]["ratio"],
        "stage_seconds_last_run": report["timings_s"],
    }
    print(json.dumps(summary, indent=2))
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"compress_time_{args.model}{'' if args.latency is None else '_latency'}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    stages = " | ".join(f"{k} {v:.1f}" for k, v in summary["stage_seconds_last_run"].items())
    if args.latency is None:
        walls = {"median wall (s)": summary["median_wall_s"]}
    else:
        walls = {"wall, table measured (s)": summary["cold_wall_s"],
                 "median wall, table cached (s)": summary["cached_median_wall_s"] or "-"}
    columns = {**walls, "runs (s)": ", ".join(str(r["wall_s"]) for r in rows),
               "peak RSS (GiB)": summary["max_peak_rss_gib"], "achieved MACs ratio": f"{summary['achieved_ratio']:.4f}"}
    stem.with_suffix(".md").write_text(
        f"`{shown}` ({summary['date']}, {summary['machine']}, {len(rows)} runs)\n\n"
        f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n| {' | '.join(str(v) for v in columns.values())} |\n\n"
        f"Stage seconds (last run): {stages}\n")


if __name__ == "__main__":
    main()
