"""What a user gets for their compute: top-1 of a pruned reference model after 0, 1, 3 and 10
epochs of knowledge distillation, and one cut against K rounds of prune + KD.

Every point is a run of the public commands, as a user would type them:

- 0 epochs: `dimap-compress MODEL --flops R` (data-free), and again with `--calib-data DATA`
  (one-shot recovery, the default `refit`), then `dimap-eval` on the data's eval split;
- E epochs: `dimap-finetune MODEL --flops R --data DATA --epochs E`, its own cosine schedule for
  each E (a user who asks for 3 epochs gets a schedule for 3, not the first 3 of 10);
- iterative: `dimap-finetune ... --flops R2 --epochs E2 --steps K` for each K in `--steps`.

Rows are saved as they finish (OUT.partial.json, `--resume` skips them). Writes
benchmarks/results/recovery_curve_<model>.{md,json,png}.

    .venv/bin/python -m benchmarks.recovery_curve --model reference-cifar10
    .venv/bin/python -m benchmarks.recovery_curve --model reference-mnist --epochs 0 0.25 1 --steps
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REFERENCE_DATA, RESULTS, command

BIN = Path(sys.executable).parent


def run(command: list[str]) -> float:
    """Run a dimap command; returns its wall time in seconds (stderr passes through)."""
    start = time.perf_counter()
    subprocess.run([str(BIN / command[0]), *command[1:]], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def evaluate(onnx: Path, data: Path) -> float:
    out = subprocess.run([str(BIN / "dimap-eval"), str(onnx), "--data", str(data), "--json", "--quiet"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["top1"]


def zero_epochs(args, tmp: Path, recovery: bool) -> dict:
    out = tmp / ("recovered.onnx" if recovery else "cut.onnx")
    command = ["dimap-compress", args.model, "--flops", str(args.ratio), "--criterion", args.criterion,
               "-o", str(out), "--force", "--quiet"]
    if recovery:
        command += ["--calib-data", str(args.data)]
    seconds = run(command)
    report = json.loads(out.with_suffix(".json").read_text())
    return {"kind": "one-shot recovery" if recovery else "cut", "epochs": 0.0, "ratio": args.ratio,
            "macs_ratio": report["achieved"]["ratio"], "top1": evaluate(out, args.data),
            "seconds": round(seconds, 1), "command": " ".join(command)}


def finetuned(args, tmp: Path, ratio: float, epochs: float, steps: int) -> dict:
    out = tmp / f"kd_{ratio}_{epochs}_{steps}.onnx"
    command = ["dimap-finetune", args.model, "--flops", str(ratio), "--criterion", args.criterion,
               "--data", str(args.data), "--epochs", f"{epochs:g}", "--steps", str(steps),
               "-o", str(out), "--force", "--quiet"]
    seconds = run(command)
    report = json.loads(out.with_suffix(".json").read_text())
    return {"kind": "KD" if steps == 1 else f"KD, {steps} rounds", "epochs": epochs, "ratio": ratio, "steps": steps,
            "macs_ratio": report["achieved"]["ratio"], "top1": report["finetune"]["finetuned_top1"],
            "teacher_top1": report["finetune"]["teacher_top1"], "seconds": round(seconds, 1),
            "command": " ".join(command)}


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"`{meta['command']}` ({meta['date']}, {meta['machine']}, wall {meta['wall_s'] / 60:.1f} min)", "",
             f"Model `{meta['model']}` (unpruned top-1 {meta['teacher_top1'] or float('nan'):.2f}% on the eval split "
             f"of {meta['data']}), criterion `{meta['criterion']}`.", "",
             "| R | what | KD epochs | MACs kept | top-1 (%) | wall (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ratio']} | {r['kind']} | {r['epochs']:g} | {r['macs_ratio']:.3f} | {r['top1']:.2f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, meta: dict, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = sorted((r["epochs"], r["top1"]) for r in rows if r["ratio"] == meta["ratio"] and r["kind"] in ("cut", "KD"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([e for e, _ in curve], [t for _, t in curve], "o-", label=f"{meta['criterion']}, R = {meta['ratio']}: KD")
    for r in rows:
        if r["kind"] == "one-shot recovery":
            ax.plot([0], [r["top1"]], "s", color="C1", label="one-shot recovery (256 images, no training)")
    if meta["teacher_top1"] is not None:
        ax.axhline(meta["teacher_top1"], color="k", lw=0.8, ls=":", label="unpruned")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("epochs of knowledge distillation")
    ax.set_ylabel("top-1 (%), eval split")
    ax.set_title(meta["model"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recovery_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="reference-cifar10", choices=list(REFERENCE_DATA))
    p.add_argument("--data", type=Path, help="data directory (default: the shared data set of --model)")
    p.add_argument("--criterion", default="dimap")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--epochs", type=float, nargs="+", default=[0, 1, 3, 10])
    p.add_argument("--steps", type=int, nargs="*", default=[1, 3],
                   help="iterative comparison: K values (empty: skip it)")
    p.add_argument("--steps-ratio", type=float, default=0.35)
    p.add_argument("--steps-epochs", type=float, default=3.0, help="total KD epochs of each K")
    p.add_argument("--out", type=Path, help="output stem (default benchmarks/results/recovery_curve_<model>)")
    p.add_argument("--resume", action="store_true", help="reuse the rows of OUT.partial.json")
    args = p.parse_args()
    args.data = args.data or REFERENCE_DATA[args.model]
    out = args.out or RESULTS / f"recovery_curve_{args.model.removeprefix('reference-')}"
    partial = out.with_suffix(".partial.json")
    setup = {"model": args.model, "data": str(args.data), "criterion": args.criterion}
    rows = []
    if args.resume and partial.exists() and json.loads(partial.read_text())["setup"] == setup:
        rows = json.loads(partial.read_text())["runs"]
    done = {(r["kind"], r["ratio"], r["epochs"]) for r in rows}
    plan = [("cut", args.ratio, 0.0, 1), ("one-shot recovery", args.ratio, 0.0, 1)] if 0 in args.epochs else []
    plan += [("KD", args.ratio, e, 1) for e in args.epochs if e > 0]
    plan += [("KD" if k == 1 else f"KD, {k} rounds", args.steps_ratio, args.steps_epochs, k) for k in args.steps]
    start = time.perf_counter()
    earlier_s = sum(r["seconds"] for r in rows)
    with tempfile.TemporaryDirectory(prefix="dimap-curve-") as tmp:
        for kind, ratio, epochs, steps in plan:
            if (kind, ratio, epochs) in done:
                continue
            if epochs == 0:
                row = zero_epochs(args, Path(tmp), recovery=kind != "cut")
            else:
                row = finetuned(args, Path(tmp), ratio, epochs, steps)
            rows.append(row)
            print(f"R={row['ratio']} {row['kind']:18s} {row['epochs']:g} epochs: top-1 {row['top1']:.2f}% "
                  f"({row['seconds']:.0f} s)", flush=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"setup": setup, "runs": rows}, indent=1) + "\n")
    teacher = next((r["teacher_top1"] for r in rows if "teacher_top1" in r), None)
    meta = {"command": command("recovery_curve"),
            "date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {platform.processor() or 'CPU'}",
            "wall_s": time.perf_counter() - start + earlier_s, "model": args.model, "data": str(args.data),
            "criterion": args.criterion, "ratio": args.ratio, "teacher_top1": teacher}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(meta, rows))
    plot(out.with_suffix(".png"), meta, rows)
    partial.unlink(missing_ok=True)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
