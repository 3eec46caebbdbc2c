"""Deployment speed: plain and lean exports, pruned FP32 and INT8, and a latency budget, timed
side by side in onnxruntime (CPU, 2 threads); the CIFAR-10 reference's top-1 for the same forms.

Per model (swin_t, swin_s, swin_b; random weights, which latency does not depend on), one
interleaved `deploy.bench.benchmark` run (batch 1 and 8) of:
- `plain_dense`: the traced timm graph (`--plain-export`), what a user had before;
- `lean_dense`: the lean export of the same model (docs/method.md section 9);
- `R_fp32`: pruned to R of the MACs, lean export; `R_int8`: the same, dynamic INT8;
- `latency050`: pruned with `--latency 0.5` (batch 1, 2 threads), lean export.
Goals are read off those rows (speed-ups are ratios within one run). "Large pruned versus small
dense": swin_s pruned to swin_t's MACs against dense swin_t, lean both. Then the CIFAR-10
reference: dense and pruned (R in --ratios), FP32 and static INT8 (calibrated on 256 train
photos), top-1 on the 10,000 test photos and latency in one interleaved run; a plot of latency
against top-1. `--runtimes onnxruntime openvino` adds OpenVINO rows.
Writes benchmarks/results/latency.{md,json} and latency_top1.png (`--out`); `--criterion` prunes with
another criterion than the default.

    .venv/bin/python -m benchmarks.latency                                   # everything (about 15 min here)
    .venv/bin/python -m benchmarks.latency --models swin_t --ratios 0.5 --min-time 1 --skip-cifar   # a quick look
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from dimap_struct import load_model
from dimap_struct.deploy.evaluate import accuracy, onnx_classifier
from dimap_struct.deploy.onnx_file import read_report
from dimap_struct.prune.criteria import criterion_names

from .common import (CIFAR10, RESULTS, command, export, large_vs_small_files, row, table, timed, timing_arguments,
                     work_folder, write_json)


def goals(results: dict, args) -> list[str]:
    """The deployment-speed goals, each read off one interleaved run."""
    lines = ["### Goals", "", "| goal | model | batch | measured | target | met |", "|---|---|---|---|---|---|"]

    def add(goal, model, batch, value, target, higher=True, fmt="{:.2f}"):
        if value is None:
            return
        met = value >= target if higher else value <= target
        shortfall = "" if met else f" (short by {abs(target - value):.2f})"
        lines.append(f"| {goal} | {model} | {batch} | {fmt.format(value)} | {'>=' if higher else '<='} {target} | "
                     f"{'yes' if met else 'no' + shortfall} |")

    for model, res in results["models"].items():
        for batch in args.batches:
            plain, lean = row(res, f"{model}_plain_dense.onnx", batch), row(res, f"{model}_lean_dense.onnx", batch)
            fp32, int8 = row(res, f"{model}_050_fp32.onnx", batch), row(res, f"{model}_050_int8.onnx", batch)
            if plain and lean:
                add("lean export: speed-up over the plain export (dense)", model, batch,
                    plain["median_ms"] / lean["median_ms"], 1.15)
            if lean and fp32:
                ideal = lean["macs"] / fp32["macs"]
                add("efficiency at R = 0.5 (lean pruned / lean dense, over the MACs ratio)", model, batch,
                    lean["median_ms"] / fp32["median_ms"] / ideal, 0.95 if batch >= 8 else 0.90)
            if plain and fp32:
                add("deploy speed-up at R = 0.5, FP32 (plain dense -> lean pruned)", model, batch,
                    plain["median_ms"] / fp32["median_ms"], 2.0)
            if plain and int8:
                add("deploy speed-up at R = 0.5, INT8 (plain dense -> lean pruned INT8)", model, batch,
                    plain["median_ms"] / int8["median_ms"], 2.6)
            target = row(res, f"{model}_latency050.onnx", batch)
            if lean and target and batch == 1:
                ratio = target["median_ms"] / lean["median_ms"]
                miss = abs(ratio / 0.5 - 1)
                lines.append(f"| --latency 0.5 (latency / lean dense) | {model} | {batch} | {ratio:.3f} | 0.5 +- 10% | "
                             f"{'yes' if miss <= 0.10 else f'no (off by {100 * miss:.0f}%)'} |")
    extra = results["extras"].get("large_vs_small")
    for batch in args.batches if extra else []:
        small, large = row(extra, "swin_t_lean_dense.onnx", batch), row(extra, "swin_s_to_t.onnx", batch)
        if small and large:
            add("large pruned beats small dense (swin_s at swin_t's MACs / dense swin_t)", "swin_s", batch,
                large["median_ms"] / small["median_ms"], 1.0, higher=False)
    cifar = results.get("cifar")
    if cifar:
        for r in cifar["top1"]:
            if r["form"].endswith("int8"):
                fp = next(x for x in cifar["top1"] if x["form"] == r["form"].replace("int8", "fp32"))
                add("INT8 top-1 loss (points), CIFAR-10 reference", r["form"].replace("_int8", ""), "-",
                    fp["top1"] - r["top1"], 0.5, higher=False)
    return lines + [""]


def cifar_section(tmp: Path, args) -> dict:
    """The CIFAR-10 reference, dense and pruned, FP32 and static INT8: top-1 on test/ and latency."""
    loaded = load_model("reference-cifar10")
    files = []
    for ratio in [1.0] + list(args.ratios):
        tag = "dense" if ratio == 1.0 else f"{int(round(ratio * 100)):03d}"
        files.append(export(loaded, tmp / f"cifar_{tag}_fp32.onnx", ratio, criterion=args.criterion))
        files.append(export(loaded, tmp / f"cifar_{tag}_int8.onnx", ratio, criterion=args.criterion,
                            quantize="int8-static",
                            calib_data=str(args.cifar), recovery="none"))
    top1 = []
    for path in files:
        acc = accuracy(onnx_classifier(path, threads=args.threads), str(args.cifar), split="eval", batch_size=250)
        report = read_report(path)
        top1.append({"form": path.stem.removeprefix("cifar_"), "top1": acc["top1"], "images": acc["images"],
                     "macs_ratio": report.achieved.ratio if report.achieved else 1.0})
        print(f"cifar {path.stem}: top-1 {acc['top1']:.2f}%", flush=True)
    return {"top1": top1, "latency": timed(files, args)}


def plot(cifar: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in cifar["latency"]["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2))
    axes = [axes] if len(batches) == 1 else axes
    by_form = {t["form"]: t["top1"] for t in cifar["top1"]}
    for ax, batch in zip(axes, batches):
        for kind, marker in (("fp32", "o"), ("int8", "s")):
            pts = sorted((r["median_ms"], by_form[Path(r["model"].split(" ")[0]).stem.removeprefix("cifar_")])
                         for r in cifar["latency"]["rows"] if r["batch"] == batch and f"_{kind}" in r["model"])
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=kind.upper())
        ax.set_title(f"CIFAR-10 reference, batch {batch}")
        ax.set_xlabel("median latency (ms), onnxruntime")
        ax.set_ylabel("top-1 (%), 10,000 test photos")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["swin_t", "swin_s", "swin_b"])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.7, 0.5, 0.35])
    timing_arguments(p, warmup=1.0, min_iters=10)
    p.add_argument("--criterion", default="dimap", choices=criterion_names(),
                   help="criterion of every pruned row (default: the default)")
    p.add_argument("--cifar", type=Path, default=CIFAR10, help="CIFAR-10 folder for the reference's top-1")
    p.add_argument("--skip-cifar", action="store_true")
    p.add_argument("--skip-extras", action="store_true", help="no large-versus-small run")
    p.add_argument("--out", default=str(RESULTS / "latency"))
    p.add_argument("--keep", type=Path, help="write the ONNX files here and keep them (default: a temporary folder)")
    args = p.parse_args()
    start = time.perf_counter()
    results = {"command": command("latency"), "date": dt.date.today().isoformat(),
               "threads": args.threads, "criterion": args.criterion, "models": {}, "extras": {}}
    with work_folder(args.keep) as tmp:
        loaded = {}
        for name in args.models:
            loaded[name] = load_model(name, pretrained=False)
            files = [export(loaded[name], tmp / f"{name}_plain_dense.onnx", 1.0, plain_export=True),
                     export(loaded[name], tmp / f"{name}_lean_dense.onnx", 1.0)]
            for r in args.ratios:
                tag = f"{name}_{int(round(r * 100)):03d}"
                files.append(export(loaded[name], tmp / f"{tag}_fp32.onnx", r, criterion=args.criterion))
                files.append(export(loaded[name], tmp / f"{tag}_int8.onnx", r, criterion=args.criterion,
                                    quantize="int8-dynamic"))
            files.append(export(loaded[name], tmp / f"{name}_latency050.onnx", latency=0.5, criterion=args.criterion,
                                latency_threads=args.threads))
            results["models"][name] = timed(files, args)
            print(f"{name}: timed {len(files)} files ({time.perf_counter() - start:.0f} s)", flush=True)
        if not args.skip_extras:
            files = large_vs_small_files(tmp, loaded, tmp / "swin_t_lean_dense.onnx", "swin_t" in args.models,
                                         {"swin_s_to_t.onnx": args.criterion})
            results["extras"]["large_vs_small"] = timed(files, args)
        if not args.skip_cifar and args.cifar.is_dir():
            results["cifar"] = cifar_section(tmp, args)
    first, out = next(iter(results["models"].values())), write_json(results, args.out, start)
    lines = [f"`{results['command']}` ({results['date']}, {first['framework']}, onnxruntime {first['onnxruntime']}, "
             f"CPU, {args.threads} threads, all graph optimisations; wall {results['wall_s'] / 60:.1f} min). "
             "Random weights for swin_t/s/b (latency does not depend on them). Every table is one interleaved "
             "run (sessions stop spinning when a run returns); speed-up and ideal are against its first row. "
             f"Pruned rows: criterion `{args.criterion}`.", ""]
    lines += goals(results, args)
    for name, res in results["models"].items():
        lines += table(res, name)
    if "large_vs_small" in results["extras"]:
        lines += table(results["extras"]["large_vs_small"], "Large pruned versus small dense: swin_s pruned to "
                       "swin_t's MACs against dense swin_t (lean exports)")
    if "cifar" in results:
        c = results["cifar"]
        lines += ["### CIFAR-10 reference: top-1 on the 10,000 test photos", "", "| form | MACs kept | top-1 (%) |",
                  "|---|---|---|"]
        lines += [f"| {t['form']} | {t['macs_ratio']:.3f} | {t['top1']:.2f} |" for t in c["top1"]] + [""]
        lines += table(c["latency"], "CIFAR-10 reference: latency")
        plot(c, out.parent / f"{out.stem}_top1.png")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
