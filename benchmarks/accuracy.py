"""Accuracy versus MACs: every criterion on a trained reference Swin, before and after fine-tuning.

For each kept-MACs fraction R and each criterion (random: 3 seeds, mean +- std), a reference
model (`--model`: reference-mnist, trained on the MNIST train split, or reference-cifar10,
trained on CIFAR-10's train/) is pruned and its top-1 on the data's "eval" split (MNIST: 2,000
held-out digits; CIFAR-10: the 10,000 test/ photos) measured (a) straight away and (b) after
the same fine-tune budget for all: knowledge distillation from the unpruned model plus labels,
`--epochs` of the "train" split, or at most `--max-steps` steps. The paper-faithful weight mode
runs at the same fractions of prunable weights (its zeros are kept during fine-tuning). A third
figure (c) is the data-free cut followed by one-shot recovery (`--recovery refit`) from 256 images
of the train split. `dimap` is not run: it is an alias of the rule named in
`prune.criteria.DEFAULT_RULE`. Rows are saved as they finish (OUT.partial.json); `--resume`
reuses them, or the rows of a finished OUT.json with the same settings (a run of fewer criteria), and
skips the cells already there. Writes benchmarks/results/accuracy[_<model>].{md,json,png}.

    .venv/bin/python -m benchmarks.accuracy                      # digits: the full grid (about 20-30 min)
    .venv/bin/python -m benchmarks.accuracy --model reference-cifar10 --max-steps 100
    .venv/bin/python -m benchmarks.accuracy --ratios 0.5 --criteria dimap l1 --epochs 0.2   # quick look
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dimap_struct import compress, load_model
from dimap_struct.deploy.evaluate import accuracy, torch_classifier
from dimap_struct.options import FinetuneOptions, TrainingOptions
from dimap_struct.pipeline import finetune
from dimap_struct.prune.criteria import ALIASES, DEFAULT_RULE, get_criterion

from .common import REFERENCE_DATA, RESULTS, command

RANDOM_SEEDS = (0, 1, 2)


def top1(model, data_config, data) -> float:
    return accuracy(torch_classifier(model, data_config, "", 10), data, split="eval", batch_size=500)["top1"]


def run_one(loaded, data, ratio: float, criterion: str, seed: int, cfg: TrainingOptions,
            reference_top1: float) -> dict:
    """Prune, fine-tune and evaluate one cell (`pipeline.finetune`), and the one-shot refit of
    the same cut (structured criteria)."""
    start = time.perf_counter()
    training = {**cfg.as_dict(), "data": data}
    if criterion == "weight":  # its zeros stay zero while fine-tuning
        options = FinetuneOptions(granularity="weight", params=ratio, **training)
    else:
        options = FinetuneOptions(flops=ratio, criterion=criterion, seed=seed, recovery="none",
                                  calib_data=data if get_criterion(criterion).needs_data else None, **training)
    result = finetune(loaded, options, teacher_top1=reference_top1, eval_batch_size=500)
    report = result.report
    recovered = None
    if criterion != "weight":
        refit = compress(loaded, ratio, criterion=criterion, seed=seed, calib_data=data, recovery="refit")
        if refit.report.architecture != report.architecture:
            raise RuntimeError(f"{criterion} at R={ratio}: the plan changed when calibration data was given")
        recovered = top1(refit.model, loaded.data_config, data)
    return {"ratio": ratio, "criterion": criterion, "seed": seed, "macs_ratio": report.achieved.ratio,
            "params_ratio": report.achieved.params_ratio, "zero_shot": report.finetune["pruned_top1"],
            "recovered": recovered, "finetuned": report.finetune["finetuned_top1"],
            "seconds": round(time.perf_counter() - start, 1)}


def resumed_rows(partial: Path, final: Path, setup: dict) -> list[dict]:
    """The rows an interrupted run saved (OUT.partial.json), else those of a finished run
    (OUT.json, e.g. one that ran fewer criteria), if it ran with the same settings (else none)."""
    source = partial if partial.exists() else final
    if not source.exists():
        return []
    saved = json.loads(source.read_text())
    old = saved.get("setup") or {}
    # the default rule only matters to rows of `dimap` itself, which are dropped if it changed
    if {k: v for k, v in old.items() if k != "default_rule"} != {k: v for k, v in setup.items() if k != "default_rule"}:
        print(f"{source}: different settings, starting afresh", flush=True)
        return []
    rows = [r for r in saved["runs"] if r["criterion"] != "dimap" or old.get("default_rule") == setup["default_rule"]]
    print(f"{source}: resuming after {len(rows)} runs", flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (criterion, ratio): mean and std over seeds (std only when > 1 seed)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["criterion"], r["ratio"]), []).append(r)
    out = []
    for (criterion, ratio), rs in groups.items():
        entry = {"criterion": criterion, "ratio": ratio, "runs": len(rs),
                 "macs_ratio": statistics.mean(r["macs_ratio"] for r in rs)}
        for key in ("zero_shot", "recovered", "finetuned"):
            values = [r[key] for r in rs if r.get(key) is not None]
            entry[key] = statistics.mean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(entry)
    return out


def fmt(entry: dict, key: str) -> str:
    if entry[key] is None:
        return "-"
    std = entry[f"{key}_std"]
    return f"{entry[key]:.2f}" + (f" +- {std:.2f}" if std is not None else "")


def write_markdown(path: Path, meta: dict, summary: list[dict], ratios: list[float]) -> None:
    criteria = list(dict.fromkeys(e["criterion"] for e in summary))
    by = {(e["criterion"], e["ratio"]): e for e in summary}
    lines = [f"`{meta['command']}` ({meta['date']}, {meta['machine']}, wall {meta['wall_s'] / 60:.1f} min)", "",
             f"Reference model `{meta.get('model', 'reference-mnist')}`: unpruned top-1 "
             f"**{meta['reference_top1']:.2f}%** on the eval split of {meta['data']}. Fine-tune: "
             f"{meta['finetune']['epochs']} epoch(s) of KD (at most {meta['finetune']['max_steps']} steps), batch "
             f"{meta['finetune']['batch_size']}, lr {meta['finetune']['lr']}. `weight` is the paper-faithful "
             "unstructured mode at the same fraction of prunable weights (its MACs column is effective MACs; "
             "the model is not faster). `random`: mean +- std over seeds 0, 1, 2. "
             f"The default `dimap` is `{meta.get('default_rule', DEFAULT_RULE)}` in this run.", ""]
    for key, title in (("zero_shot", "Top-1 (%) straight after pruning"),
                       ("recovered", "Top-1 (%) after one-shot recovery (refit, 256 train images)"),
                       ("finetuned", "Top-1 (%) after fine-tuning")):
        lines += [f"### {title}", "", "| criterion | " + " | ".join(f"R = {r}" for r in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]
        for c in criteria:
            cells = [fmt(by[c, r], key) if (c, r) in by else "-" for r in ratios]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["MACs ratio achieved (structured: real MACs; weight: effective MACs):", "",
              "| criterion | " + " | ".join(f"R = {r}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
    for c in criteria:
        lines.append(f"| {c} | " + " | ".join(f"{by[c, r]['macs_ratio']:.3f}" if (c, r) in by else "-"
                                              for r in ratios) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, summary: list[dict], reference_top1: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in zip(axes, ("zero_shot", "finetuned"), ("straight after pruning", "after the same KD budget")):
        for c in dict.fromkeys(e["criterion"] for e in summary):
            pts = sorted((e["macs_ratio"], e[key], e[f"{key}_std"] or 0) for e in summary if e["criterion"] == c)
            xs, ys, err = zip(*pts)
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2, label=c,
                        ls="--" if c == "weight" else "-")
        ax.axhline(reference_top1, color="k", lw=0.8, ls=":", label="unpruned")
        ax.set_title(title)
        ax.set_xlabel("MACs kept (fraction)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%), eval split")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.65, 0.5, 0.35])
    p.add_argument("--criteria", nargs="+", default=[c for c in ALIASES if c != "dimap"] + ["weight"])
    p.add_argument("--model", default="reference-mnist", choices=list(REFERENCE_DATA))
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, help="at most this many fine-tuning steps (batch 64)")
    p.add_argument("--data", help="data directory (default: the shared MNIST or CIFAR-10 beside the checkout, for --model)")
    p.add_argument("--out", help="output stem (.md, .json, .png; default benchmarks/results/accuracy[_cifar10])")
    p.add_argument("--threads", type=int, default=2, help="torch threads (results do not depend on it)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the rows of OUT.partial.json written by an interrupted run with the same settings")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.data = str(args.data or REFERENCE_DATA[args.model])
    args.out = args.out or str(RESULTS / ("accuracy" if args.model == "reference-mnist" else
                                          f"accuracy_{args.model.removeprefix('reference-')}"))
    start = time.perf_counter()
    loaded = load_model(args.model)
    reference_top1 = top1(loaded.model, loaded.data_config, args.data)
    cfg = TrainingOptions(epochs=args.epochs, max_steps=args.max_steps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    # the unpruned top-1 stands in for the weights: a resumed run must prune the same model
    # training_seed: a random row's seed also seeds its fine-tuning (pipeline.finetune); rows saved
    # when fine-tuning always used seed 0 carry no such key and are not resumed
    setup = {"model": args.model, "data": args.data, "finetune": cfg.as_dict(), "default_rule": DEFAULT_RULE,
             "reference_top1": reference_top1, "training_seed": "the row's seed"}
    rows = resumed_rows(partial, out.with_suffix(".json"), setup) if args.resume else []
    earlier_s = sum(r["seconds"] for r in rows)
    done = {(r["ratio"], r["criterion"], r["seed"]) for r in rows}
    for ratio in args.ratios:
        for criterion in args.criteria:
            for seed in (RANDOM_SEEDS if criterion == "random" else (0,)):
                if (ratio, criterion, seed) in done:
                    continue
                row = run_one(loaded, args.data, ratio, criterion, seed, cfg, reference_top1)
                rows.append(row)
                partial.write_text(json.dumps({"setup": setup, "runs": rows}, indent=1) + "\n")
                print(f"R={ratio} {criterion:16s} seed {seed}: MACs {row['macs_ratio']:.3f} "
                      f"zero-shot {row['zero_shot']:6.2f}  recovered {row['recovered'] or float('nan'):6.2f}  "
                      f"fine-tuned {row['finetuned']:6.2f}  "
                      f"({row['seconds']} s)", flush=True)
    summary = summarise(rows)
    meta = {"command": command("accuracy"), "date": dt.date.today().isoformat(),
            "model": args.model, "default_rule": DEFAULT_RULE,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "wall_s": time.perf_counter() - start + earlier_s,
            "reference_top1": reference_top1, "finetune": cfg.as_dict(), "data": args.data}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "setup": setup, "summary": summary, "runs": rows},
                                                          indent=2) + "\n")
    write_markdown(out.with_suffix(".md"), meta, summary, args.ratios)
    plot(out.with_suffix(".png"), summary, reference_top1)
    partial.unlink(missing_ok=True)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
