"""Speed at a MACs budget, by criterion: how close each data-free criterion's pruned model comes
to the speed-up its MACs promise, next to the accuracy it keeps.

At the same MACs, criteria keep different structures (heads against MLP channels), and those do
not cost the same time per MAC: the attention matmuls and softmax of a kept head are slow per
MAC on a CPU (profile: benchmarks/results/profile_swin_t.md). Per model (swin_t, swin_s, swin_b;
random weights, which latency does not depend on, though the plans do; a `reference-*` model is
loaded with its trained weights), one interleaved `deploy.bench.benchmark` run
(batch 1 and 8) of the lean dense export and the lean export pruned to `--ratio` of the MACs by
each criterion. Efficiency = speed-up / MACs ratio. Then, per criterion, swin_s pruned to
swin_t's MACs against dense swin_t. Accuracy is not re-measured here: the table quotes, from
benchmarks/results/decision.json (benchmarks.decide over benchmarks.accuracy's runs), the
CIFAR-10 reference's top-1 at R = 0.5 and each criterion's mean rank.
Writes benchmarks/results/speed_by_criterion.{md,json}.

    .venv/bin/python -m benchmarks.speed_by_criterion                 # about 15 min
    .venv/bin/python -m benchmarks.speed_by_criterion --models swin_t --criteria dimap dimap-cost --min-time 1
    .venv/bin/python -m benchmarks.speed_by_criterion --models reference-cifar10 --batches 1 64 --skip-extras \\
        --out benchmarks/results/speed_by_criterion_cifar10   # the plans of the trained reference
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

from dimap_struct import load_model
from dimap_struct.prune.criteria import criterion_names

from .common import RESULTS, command, export, large_vs_small_files, row, table, timed, work_folder, write_json

DATA_FREE = ["dimap", "lamp-global", "dimap-cost", "dimap-paper", "dimap-bound", "l1", "l2", "magnitude-global"]


def accuracy_columns(decision_path: Path, criterion: str) -> dict:
    """CIFAR-10 top-1 at R = 0.5 (zero-shot, after KD) and the mean rank, from decide.py's output;
    `dimap` is looked up under the rule it stands for."""
    from dimap_struct.prune.criteria import DEFAULT_RULE

    if not decision_path.is_file():
        return {}
    decision = json.loads(decision_path.read_text())
    name = DEFAULT_RULE if criterion == "dimap" else criterion
    cells = {c["cell"]: c["top1"] for c in decision["cells"]}
    return {"cifar_r050_zero_shot": cells.get("reference-cifar10 R=0.5 zero_shot", {}).get(name),
            "cifar_r050_finetuned": cells.get("reference-cifar10 R=0.5 finetuned", {}).get(name),
            "mean_rank": decision["mean_rank"].get(name)}


def kept_structure(report_path: Path) -> dict:
    """Kept heads and MLP channels, summed over blocks, from a `dimap-compress` JSON report."""
    blocks = json.loads(report_path.read_text())["blocks"]
    return {"heads": sum(b["heads"] for b in blocks), "heads_before": sum(b["heads_before"] for b in blocks),
            "mlp": sum(b["mlp_width"] for b in blocks), "mlp_before": sum(b["mlp_width_before"] for b in blocks)}


def plans_table(results: dict, args) -> list[str]:
    """Kept heads and MLP channels (fractions of the unpruned model's) per criterion and model."""
    models = list(results.get("plans", {}))
    if not models:
        return []
    lines = ["### What each criterion keeps at R = {:g}: heads / MLP channels (fraction kept)".format(args.ratio), "",
             "| criterion | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for criterion in args.criteria:
        cells = []
        for model in models:
            p = results["plans"][model].get(criterion)
            cells.append(f"{p['heads'] / p['heads_before']:.2f} / {p['mlp'] / p['mlp_before']:.2f}" if p else "-")
        lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
    return lines + [""]


def summary(results: dict, args) -> list[str]:
    head = " | ".join(f"{m} b{b}" for m in results["models"] for b in args.batches)
    large_column = (f" swin_s at swin_t's MACs / dense swin_t, {' / '.join(f'b{b}' for b in args.batches)} |"
                    if results["large_vs_small"] else "")
    lines = ["### Efficiency at R = {:g} (lean pruned / lean dense, over the MACs ratio)".format(args.ratio), "",
             f"| criterion | {head} |{large_column} CIFAR-10 top-1 at R = 0.5, zero-shot / after KD | "
             "mean rank (16 cells) |",
             "|---|" + "---|" * (len(results["models"]) * len(args.batches) + bool(large_column)) + "---|---|"]
    for criterion in args.criteria:
        cells = []
        for name, res in results["models"].items():
            for batch in args.batches:
                r = row(res, f"{name}_{criterion}.onnx", batch)
                cells.append(f"{r['efficiency']:.2f}" if r and r["efficiency"] is not None else "-")
        large, ratios = results["large_vs_small"], []
        for batch in args.batches:
            small = row(large, "swin_t_dense.onnx", batch) if large else None
            big = row(large, f"swin_s_to_t_{criterion}.onnx", batch) if large else None
            ratios.append(f"{big['median_ms'] / small['median_ms']:.2f}" if small and big else "-")
        ratio = f" {' / '.join(ratios)} |" if large else ""
        acc = results["accuracy"].get(criterion, {})
        zs, ft = acc.get("cifar_r050_zero_shot"), acc.get("cifar_r050_finetuned")
        top1 = f"{zs:.2f} / {ft:.2f}" if zs is not None and ft is not None else "-"
        rank = f"{acc['mean_rank']:.2f}" if acc.get("mean_rank") is not None else "-"
        lines.append(f"| {criterion} | " + " | ".join(cells) + f" |{ratio} {top1} | {rank} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed_by_criterion", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["swin_t", "swin_s", "swin_b"])
    p.add_argument("--criteria", nargs="+", default=DATA_FREE, choices=criterion_names())
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--min-iters", type=int, default=10)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--skip-extras", action="store_true", help="no swin_s-at-swin_t's-MACs run")
    p.add_argument("--decision", type=Path, default=RESULTS / "decision.json")
    p.add_argument("--out", default=str(RESULTS / "speed_by_criterion"))
    p.add_argument("--keep", type=Path, help="write the ONNX files here and keep them")
    args = p.parse_args()
    args.runtimes = ["onnxruntime"]
    start = time.perf_counter()
    results = {"command": command("speed_by_criterion"),
               "date": dt.date.today().isoformat(), "ratio": args.ratio, "threads": args.threads, "models": {},
               "large_vs_small": None, "plans": {},
               "accuracy": {c: accuracy_columns(args.decision, c) for c in args.criteria}}
    with work_folder(args.keep) as tmp:
        loaded = {}
        for name in args.models:
            loaded[name] = load_model(name, pretrained=name.startswith("reference"))  # a trained reference: its plans
            files = [export(loaded[name], tmp / f"{name}_dense.onnx", 1.0)]
            files += [export(loaded[name], tmp / f"{name}_{c}.onnx", args.ratio, criterion=c) for c in args.criteria]
            results["models"][name] = timed(files, args)
            results["plans"][name] = {c: kept_structure(tmp / f"{name}_{c}.json") for c in args.criteria}
            print(f"{name}: timed {len(files)} files ({time.perf_counter() - start:.0f} s)", flush=True)
        if not args.skip_extras:
            files = large_vs_small_files(tmp, loaded, tmp / "swin_t_dense.onnx", "swin_t" in args.models,
                                         {f"swin_s_to_t_{c}.onnx": c for c in args.criteria})
            results["large_vs_small"] = timed(files, args)
    first, out = next(iter(results["models"].values())), write_json(results, args.out, start)
    source = args.decision.resolve()
    shown = source.relative_to(Path.cwd()) if source.is_relative_to(Path.cwd()) else source
    lines = [f"`{results['command']}` ({results['date']}, onnxruntime {first['onnxruntime']}, CPU, {args.threads} "
             f"threads; wall {results['wall_s'] / 60:.1f} min). Random weights for timm models, trained weights for "
             f"reference models; every table is one interleaved run. Accuracy columns quoted from {shown}.", ""]
    lines += summary(results, args) + plans_table(results, args)
    for name, res in results["models"].items():
        lines += table(res, name)
    if results["large_vs_small"]:
        lines += table(results["large_vs_small"], "swin_s pruned to swin_t's MACs, by criterion, against dense swin_t")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
