"""Accuracy against measured speed: top-1 of each plan against its measured speed-up.

For a trained reference model (`--models`: reference-cifar10, reference-mnist) and each plan
(`--plans`) at each budget (`--budgets`), the pruned model is exported and its top-1 on the data's
eval split measured three ways: zero-shot (data-free), after one-shot recovery from
`--calib-images` train images (`refit` and `sequential`), and after KD fine-tuning
(`dimap-finetune`, from the one-shot `refit` model, `--kd-epochs` or `--kd-steps`; all cells, or
with `--kd-near S` per plan the cell nearest S times faster at batch 8). The plans:

- `default-flops`: the default criterion under `--flops R`;
- `default-latency`: the default under `--latency R --latency-batch 8`, floors 0;
- `dimap-cost`, `lamp-global`: those criteria under `--flops R`.

Speed: every plan's ONNX file and the dense one, timed in one interleaved `dimap-bench` run per
model at batch 1 and 8. Cells are saved as they finish (OUT.partial.json) and reused by a
rerun with the same settings. Writes OUT.{md,json,png} (default benchmarks/results/pareto).

    .venv/bin/python -m benchmarks.pareto                                  # both models, every plan
    .venv/bin/python -m benchmarks.pareto --models reference-mnist --budgets 0.5 --kd-steps 20
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

from dimap_struct import load_model
from dimap_struct.deploy.evaluate import accuracy, torch_classifier
from dimap_struct.errors import UserError

from .common import REFERENCE_DATA, RESULTS, command, export, row, timed, timing_arguments, work_folder, write_json

PLANS = {
    "default-flops": {},
    "default-latency": dict(latency_batch=8, min_heads=0, min_mlp=0),
    "dimap-cost": dict(criterion="dimap-cost"),
    "lamp-global": dict(criterion="lamp-global"),
}
WAYS = ("zero-shot", "refit", "sequential", "kd")


def budget_options(plan: str, ratio: float) -> dict:
    return {**PLANS[plan], ("latency" if plan == "default-latency" else "flops"): ratio}


def top1(model, loaded, data: str) -> float:
    return accuracy(torch_classifier(model, loaded.data_config, "", loaded.adapter.num_classes), data,
                    split="eval", batch_size=500)["top1"]


def measure_cell(loaded, data: str, plan: str, ratio: float, folder: Path, args) -> dict:
    """Top-1 of one plan at one budget, every way; its ONNX file is `file` (zero-shot form)."""
    from dimap_struct import compress

    options = budget_options(plan, ratio)
    path = folder / f"{loaded.name}_{plan}_{ratio:g}.onnx"
    cell = {"model": loaded.name, "plan": plan, "budget": ratio, "file": str(path), "top1": {}, "seconds": {}}
    start = time.perf_counter()
    try:
        result = compress(loaded, None, output=path, force=True, **options)
    except UserError as err:  # a target the plan's floors cannot reach
        return {**cell, "refused": str(err)}
    cell["macs_ratio"] = result.report.achieved.ratio
    cell["top1"]["zero-shot"] = top1(result.model, loaded, data)
    cell["seconds"]["zero-shot"] = time.perf_counter() - start
    for method in ("refit", "sequential"):
        start = time.perf_counter()
        recovered = compress(loaded, None, calib_data=data, calib_images=args.calib_images, recovery=method,
                             **options)
        cell["top1"][method] = top1(recovered.model, loaded, data)
        cell["seconds"][method] = time.perf_counter() - start
    return cell


def distil(cell: dict, loaded, data: str, args) -> None:
    """Add the cell's top-1 after KD fine-tuning (from the one-shot `refit` model)."""
    from dimap_struct.pipeline import finetune

    start = time.perf_counter()
    training = dict(epochs=args.kd_epochs) if args.kd_steps is None else dict(max_steps=args.kd_steps,
                                                                             epochs=args.kd_epochs)
    tuned = finetune(loaded, None, data=data, calib_data=data, calib_images=args.calib_images, recovery="refit",
                     teacher_top1=args.dense_top1[loaded.name], eval_batch_size=500, **training,
                     **budget_options(cell["plan"], cell["budget"]))
    cell["top1"]["kd"] = tuned.report.finetune["finetuned_top1"]
    cell["kd"] = {"epochs": args.kd_epochs, "max_steps": args.kd_steps, "steps": tuned.report.finetune["steps"],
                  "seconds": time.perf_counter() - start}


def kd_cells(cells: list[dict], near: list[float] | None) -> list[dict]:
    """The cells to fine-tune: all, or per plan the one whose batch-8 speed-up is nearest each of `near`."""
    timed_cells = [c for c in cells if "refused" not in c and (c.get("speedup") or {}).get("8")]
    if not near:
        return timed_cells
    chosen = []
    for plan in dict.fromkeys(c["plan"] for c in timed_cells):
        mine = [c for c in timed_cells if c["plan"] == plan]
        for target in near:
            best = min(mine, key=lambda c: abs(c["speedup"]["8"] - target))
            if best not in chosen:
                chosen.append(best)
    return chosen


def speed(cells: list[dict], dense: Path, args) -> None:
    """Measured speed-up of every cell's file over `dense` at each batch, from one interleaved run."""
    files = [dense] + [Path(c["file"]) for c in cells if "refused" not in c]
    result = timed(files, args)
    for cell in cells:
        if "refused" in cell:
            continue
        name = Path(cell["file"]).name
        cell["speedup"] = {}
        for batch in args.batches:
            r = row(result, name, batch)
            cell["speedup"][str(batch)] = r["speedup"] if r is not None else None


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto front of (speed-up, top-1) points: none faster and at least as accurate."""
    front, best = [], float("-inf")
    for s, t in sorted(points, key=lambda p: (-p[0], -p[1])):
        if t > best:
            front.append((s, t))
            best = t
    return sorted(front)


def at_speedup(cells: list[dict], way: str, batch: str, target: float) -> tuple[float, dict] | None:
    """The best top-1 (`way`) of any cell at least `target` times faster at `batch`, and its cell."""
    found = [(c["top1"][way], c) for c in cells if "refused" not in c and way in c["top1"]
             and (c.get("speedup") or {}).get(batch) and c["speedup"][batch] >= target]
    return max(found, key=lambda f: f[0]) if found else None


def one_shot(cell: dict) -> float:
    """A cell's one-shot top-1: the better of `refit` and `sequential` (both a flag away)."""
    return max(cell["top1"]["refit"], cell["top1"]["sequential"])


def interpolated(cells: list[dict], plan: str, target: float, batch: str = "8") -> float | None:
    """The plan's one-shot top-1 at `target` speed-up, on the straight line between the two
    budgets whose speed-ups bracket it; None when no budget reaches it (docs/decisions.md)."""
    points = sorted((c["speedup"][batch], one_shot(c)) for c in cells
                    if c["plan"] == plan and "refused" not in c and (c.get("speedup") or {}).get(batch))
    for (s0, t0), (s1, t1) in zip(points, points[1:]):
        if s0 <= target <= s1:
            return t0 + (t1 - t0) * (target - s0) / (s1 - s0) if s1 > s0 else max(t0, t1)
    return points[-1][1] if points and points[-1][0] == target else None


def markdown(cells: list[dict], meta: dict) -> str:
    lines = [f"# Accuracy against measured speed-up ({meta['date']}, {meta['machine']})", "",
             f"`{meta['command']}`", "",
             "Top-1 (%) on the eval split; speed-up measured by one interleaved `dimap-bench` run per model "
             "(onnxruntime, the lean export), against the dense export.", ""]
    for model in dict.fromkeys(c["model"] for c in cells):
        rows = [c for c in cells if c["model"] == model]
        lines += [f"## {model} (dense {meta['dense_top1'][model]:.2f}%)", "",
                  "| plan | budget | MACs kept | speed-up b1 / b8 | zero-shot | refit | sequential | KD |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in rows:
            if "refused" in c:
                lines.append(f"| {c['plan']} | {c['budget']:g} | refused: {c['refused']} | | | | | |")
                continue
            sp = c.get("speedup", {})
            speeds = " / ".join(f"{sp[b]:.2f}x" if sp.get(b) else "-" for b in ("1", "8"))
            tops = " | ".join(f"{c['top1'][w]:.2f}" if w in c["top1"] else "-" for w in WAYS)
            lines.append(f"| {c['plan']} | {c['budget']:g} | {c['macs_ratio']:.3f} | {speeds} | {tops} |")
        lines += ["", "Best top-1 at a measured speed-up of at least (batch 8):", "",
                  "| speed-up | zero-shot | refit | sequential | KD |", "|---|---|---|---|---|"]
        for target in (1.5, 2.0, 2.5):
            found = [at_speedup(rows, w, "8", target) for w in WAYS]
            lines.append(f"| {target:g}x | " + " | ".join(
                f"{f[0]:.2f} ({f[1]['plan']} {f[1]['budget']:g})" if f else "none" for f in found) + " |")
        plans = list(dict.fromkeys(c["plan"] for c in rows))
        lines += ["", "One-shot top-1 (better of refit and sequential) interpolated at a batch-8 speed-up "
                      "(the floors rule, docs/decisions.md):", "",
                  "| speed-up | " + " | ".join(plans) + " |", "|---" * (len(plans) + 1) + "|"]
        for target in (1.5, 2.0):
            values = [interpolated(rows, plan, target) for plan in plans]
            lines.append(f"| {target:g}x | " + " | ".join("not reached" if v is None else f"{v:.2f}"
                                                          for v in values) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(path: Path, cells: list[dict], meta: dict, batch: str = "8") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(c["model"] for c in cells))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [c for c in cells if c["model"] == model and "refused" not in c and c.get("speedup", {}).get(batch)]
        for plan, color in zip(dict.fromkeys(c["plan"] for c in rows), ("C0", "C1", "C2", "C3", "C4")):
            mine = sorted((c for c in rows if c["plan"] == plan), key=lambda c: c["speedup"][batch])
            for way, marker in zip(WAYS, "osD^"):
                points = [(c["speedup"][batch], c["top1"][way]) for c in mine if way in c["top1"]]
                if points:
                    ax.scatter(*zip(*points), marker=marker, color=color, alpha=0.7,
                               label=f"{plan}, {way}" if way in ("zero-shot", "kd") or len(mine) else None)
            ax.plot([c["speedup"][batch] for c in mine], [one_shot(c) for c in mine], color=color, alpha=0.6)
        points = [(c["speedup"][batch], one_shot(c)) for c in rows]
        ax.plot(*zip(*frontier(points)), color="black", linestyle="--", alpha=0.5, label="one-shot Pareto front")
        ax.axhline(meta["dense_top1"][model], color="grey", linestyle=":", label="dense")
        ax.set(title=f"{model}, batch {batch}; lines: one-shot (best of refit, sequential)",
               xlabel="measured speed-up", ylabel="top-1 (%)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    from dimap_struct.deploy.latency_probe import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["reference-cifar10", "reference-mnist"])
    parser.add_argument("--plans", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.4, 0.3])
    parser.add_argument("--calib-images", type=int, default=256)
    parser.add_argument("--kd-epochs", type=float, default=3.0)
    parser.add_argument("--kd-steps", type=int, default=None,
                        help="stop KD after N steps (0: no KD); default: --kd-epochs in full")
    parser.add_argument("--kd-near", nargs="+", type=float, default=None, metavar="S",
                        help="fine-tune only, per plan, the cell whose batch-8 speed-up is nearest S (default: all)")
    timing_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS / "pareto"))
    parser.add_argument("--keep", type=Path, default=None, help="keep the ONNX files in this folder")
    parser.add_argument("--render", action="store_true", help="only write OUT.md and OUT.png from OUT.json")
    args = parser.parse_args(argv)
    if args.render:
        done = json.loads(Path(args.out + ".json").read_text())
        Path(args.out + ".md").write_text(markdown(done["cells"], done) + "\n")
        plot(Path(args.out + ".png"), done["cells"], done)
        return
    start = time.perf_counter()
    meta = {"command": command("pareto", argv), "date": dt.date.today().isoformat(), "machine": machine(),
            "platform": platform.platform(), "dense_top1": {}, "settings": {
                k: getattr(args, k) for k in ("plans", "budgets", "calib_images", "batches", "threads")}}
    partial = Path(args.out + ".partial.json")
    done = json.loads(partial.read_text()) if partial.exists() else {}
    same = {k: done.get("settings", {}).get(k) for k in meta["settings"]} == meta["settings"]
    cells = done.get("cells", []) if same else []
    if same:
        meta["dense_top1"].update(done.get("dense_top1", {}))
    args.dense_top1 = meta["dense_top1"]
    with work_folder(args.keep) as folder:
        for model in args.models:
            loaded = load_model(model)
            data = str(REFERENCE_DATA[model])
            meta["dense_top1"][model] = top1(loaded.model, loaded, data)
            dense = export(loaded, folder / f"{model}_dense.onnx", 1.0)
            for plan in args.plans:
                for ratio in args.budgets:
                    if any(c["model"] == model and c["plan"] == plan and c["budget"] == ratio
                           and Path(c["file"]).exists() for c in cells):
                        continue
                    cells = [c for c in cells if not (c["model"] == model and c["plan"] == plan
                                                      and c["budget"] == ratio)]
                    cells.append(measure_cell(loaded, data, plan, ratio, folder, args))
                    print(json.dumps(cells[-1]), flush=True)
                    partial.write_text(json.dumps({"settings": meta["settings"], "dense_top1": meta["dense_top1"],
                                                     "cells": cells}, indent=1))
            mine = [c for c in cells if c["model"] == model]
            if any("speedup" not in c for c in mine if "refused" not in c):
                speed(mine, dense, args)
                partial.write_text(json.dumps({"settings": meta["settings"], "dense_top1": meta["dense_top1"],
                                                     "cells": cells}, indent=1))
            for cell in kd_cells(mine, args.kd_near) if args.kd_steps != 0 else []:
                if cell.get("kd", {}).get("epochs") == args.kd_epochs and cell["kd"]["max_steps"] == args.kd_steps:
                    continue
                distil(cell, loaded, data, args)
                print(json.dumps(cell), flush=True)
                partial.write_text(json.dumps({"settings": meta["settings"], "dense_top1": meta["dense_top1"],
                                                     "cells": cells}, indent=1))
    Path(args.out + ".md").write_text(markdown(cells, meta) + "\n")
    plot(Path(args.out + ".png"), cells, meta)
    write_json({**meta, "cells": cells}, args.out, start)


if __name__ == "__main__":
    main()
