"""The latency table against dimap-bench: does `--latency R` land on R, and does the table predict
the pruned models it plans (docs/method.md section 11)?

Per model and batch: the dense lean export, then `--latency R` for each R in `--ratios` with the
default (`one-module-per-ms`, floors 0: whole branches may go) and with `dimap-cost` (its own
policy on the same table, default floors), each with compress's own timed checks of the plan
(`--latency-checks`, default), all timed in one interleaved `deploy.bench.benchmark`
run at that batch (2 threads). Per plan: the table's predicted fraction of the unpruned plan, the
measured fraction (pruned / dense median), their difference from R, and the prediction's error
(predicted fraction / measured fraction - 1). The table is measured once per (model, batch) and
cached as in any run.

    .venv/bin/python -m benchmarks.latency_table                       # reference-cifar10 and swin_t
    .venv/bin/python -m benchmarks.latency_table --models reference-cifar10 --batches 1
Writes benchmarks/results/latency_table.{md,json} (`--out`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from dimap_struct import load_model
from dimap_struct.deploy.onnx_file import read_report
from dimap_struct.errors import UserError

from .common import RESULTS, command, export, row, timed, timing_arguments, work_folder, write_json

PLANS = {"default": dict(min_heads=0, min_mlp=0), "dimap-cost": dict(criterion="dimap-cost")}


def measure(model: str, batch: int, folder: Path, args) -> list[dict]:
    loaded = load_model(model, pretrained=False) if not model.startswith("reference") else load_model(model)
    dense = export(loaded, folder / f"{model}_dense.onnx", 1.0)
    files, plans, refused = [dense], [], []
    for ratio in args.ratios:
        for plan, options in PLANS.items():
            path = folder / f"{model}_b{batch}_{plan}_{ratio:g}.onnx"
            start = time.perf_counter()
            try:
                export(loaded, path, latency=ratio, latency_batch=batch, latency_threads=args.threads, **options)
            except UserError as err:  # a target the plan's floors cannot reach: a row that says so
                refused.append({"model": model, "batch": batch, "plan": plan, "target": ratio, "refused": str(err)})
                continue
            report = read_report(path)
            files.append(path)
            plans.append({"model": model, "batch": batch, "plan": plan, "target": ratio, "file": path.name,
                          "compress_s": round(time.perf_counter() - start, 1),
                          "predicted": report.latency["predicted_ratio"],
                          "checks": report.latency.get("checks", []),
                          "heads": report.architecture.heads, "mlp": report.architecture.mlp_widths})
    args.batches = [batch]
    result = timed(files, args)
    base = row(result, dense.name, batch)["median_ms"]
    for p in plans:
        measured = row(result, p["file"], batch)["median_ms"] / base
        p.update(measured=measured, off_target=measured - p["target"], prediction_error=p["predicted"] / measured - 1,
                 removed_branches=sum(h == 0 for h in p["heads"]) + sum(m == 0 for m in p["mlp"]))
    return plans + refused


def _checks(row: dict) -> str:
    """The fractions compress measured while it chose the plan (`--latency-checks`), in order."""
    return ", ".join(f"{c['measured_ratio']:.3f}" for c in row.get("checks", [])) or "none"


def markdown(rows: list[dict], args) -> str:
    lines = ["# `--latency R` against dimap-bench", "",
             f"{dt.date.today()}, {args.machine}. Command: `{command('latency_table', args.argv)}`.", "",
             "| model | batch | plan | R | predicted | measured | measured - R | prediction error | branches removed "
             "| compress's checks (measured) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['plan']} | {r['target']:g} | refused: "
                         f"{r['refused'].split(': ', 1)[-1]} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['batch']} | {r['plan']} | {r['target']:g} | {r['predicted']:.3f} | "
                     f"{r['measured']:.3f} | {r['off_target']:+.3f} | {100 * r['prediction_error']:+.1f}% | "
                     f"{r['removed_branches']} | {_checks(r)} |")
    within = sum(abs(r.get("off_target", 1)) <= 0.03 for r in rows)
    accurate = sum(abs(r.get("prediction_error", 1)) <= 0.05 for r in rows)
    lines += ["", f"Within +-0.03 of R: {within} of {len(rows)}. Prediction within 5%: {accurate} of {len(rows)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from dimap_struct.deploy.latency_probe import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["reference-cifar10", "swin_t"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.7, 0.5, 0.35])
    timing_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS / "latency_table"))
    parser.add_argument("--keep", type=Path, default=None, help="keep the ONNX files in this folder")
    args = parser.parse_args(argv)
    args.argv, args.machine = argv, machine()
    start, rows = time.perf_counter(), []
    batches = list(args.batches)
    with work_folder(args.keep) as folder:
        for model in args.models:
            for batch in batches:
                rows += measure(model, batch, folder, args)
                print(markdown(rows, args), flush=True)
    Path(args.out + ".md").write_text(markdown(rows, args))
    write_json({"rows": rows, "machine": args.machine}, args.out, start)


if __name__ == "__main__":
    main()
