"""Realised speed-up of pruned Swins in onnxruntime (CPU, 2 threads), against their own dense model.

For each model and kept-MACs fraction R, two pruned exports are timed beside the dense one:
heads + MLP channels only, and with residual channels too (`--prune-embed`). All files of one
model run interleaved in one `dimap_struct.deploy.bench.benchmark` call (same onnxruntime settings,
all graph optimisations for every file, the dense one included), so speed-ups are ratios
measured in one run. Also: `--round-to` 1 / 8 / 16 / 32 on swin_t at R = 0.5 with residual
pruning; "large pruned versus small dense": swin_s pruned to swin_t's MACs against dense
swin_t; and what onnxslim in the export brings: dense and R = 0.5 swin_t with and without it.
Writes benchmarks/results/latency.{md,json,png}.

    .venv/bin/python benchmarks/latency.py                          # everything (about 10-15 min)
    .venv/bin/python benchmarks/latency.py --models swin_t --ratios 0.5 --min-iters 5   # a quick look
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dimap_struct import compress, load_model  # noqa: E402
from dimap_struct.deploy.bench import benchmark  # noqa: E402
from dimap_struct.deploy.export import export_onnx  # noqa: E402
from dimap_struct.deploy.onnx_file import read_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def export(loaded, path: Path, ratio, **options) -> Path:
    compress(loaded, ratio, output=path, force=True, **options)
    return path


def with_and_without_slim(loaded, tmp: Path, name: str, ratio) -> list[Path]:
    """The export as dimap-compress writes it (onnxslim applied) and the same model without onnxslim."""
    slim = tmp / f"{name}_slim.onnx"
    result = compress(loaded, ratio, output=slim, force=True)
    plain = tmp / f"{name}_noslim.onnx"
    export_onnx(result.model, plain, result.report.input_size, result.report.metadata(), slim=False)
    return [plain, slim]


def timed(paths: list[Path], args) -> dict:
    return benchmark([str(p) for p in paths], batches=args.batches, threads=args.threads,
                     warmup=args.warmup, min_iters=args.min_iters, min_time=args.min_time)


def table(rows: list[dict], title: str) -> list[str]:
    lines = [f"### {title}", "", "| model | batch | median ms | p10 | p90 | img/s | speed-up | ideal | efficiency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-"
        ideal = f"{r['ideal_speedup']:.2f}x" if r["ideal_speedup"] is not None else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['median_ms']:.1f} | {r['p10_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['images_per_s']:.1f} | {r['speedup']:.2f}x | {ideal} | {eff} |")
    return lines + [""]


def goals(results: dict) -> list[str]:
    """The issue's goals at R = 0.5: efficiency >= 0.95 at batch 8, >= 0.90 at batch 1."""
    lines = ["### Goals at R = 0.5 (efficiency = speed-up / ideal)", "",
             "| model | variant | batch | efficiency | goal | met |", "|---|---|---|---|---|---|"]
    for model, res in results["models"].items():
        for r in res["rows"]:
            if "_050" not in r["model"]:
                continue
            goal = 0.95 if r["batch"] >= 8 else 0.90
            variant = "heads+MLP+residual" if "embed" in r["model"] else "heads+MLP"
            met = "yes" if r["efficiency"] >= goal else f"no (short by {goal - r['efficiency']:.2f})"
            lines.append(f"| {model} | {variant} | {r['batch']} | {r['efficiency']:.2f} | {goal} | {met} |")
    return lines + [""]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for res in results["models"].values() for r in res["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2))
    axes = [axes] if len(batches) == 1 else axes
    for ax, batch in zip(axes, batches):
        for model, res in results["models"].items():
            for variant, marker in (("dense", "s"), ("heads", "o"), ("embed", "^")):
                pts = sorted((r["macs"] / 1e9, r["median_ms"]) for r in res["rows"] if r["batch"] == batch
                             and (variant == "dense" and "dense" in r["model"] or variant != "dense"
                                  and r["model"].endswith(f"{variant}.onnx")))
                if pts:
                    ax.plot(*zip(*pts), marker=marker, ls="-" if variant != "dense" else "",
                            label=f"{model} {variant}")
        ax.set_title(f"batch {batch}, {results['threads']} threads")
        ax.set_xlabel("GMACs")
        ax.set_ylabel("median latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["swin_t", "swin_s", "swin_b"])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.7, 0.5, 0.35])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--min-iters", type=int, default=10)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16, 32], dest="round_to")
    p.add_argument("--skip-extras", action="store_true", help="no round-to and large-vs-small runs")
    p.add_argument("--out", default=str(RESULTS / "latency"))
    args = p.parse_args()
    start = time.perf_counter()
    results = {"command": "python benchmarks/latency.py " + " ".join(sys.argv[1:]), "date": dt.date.today().isoformat(),
               "threads": args.threads, "models": {}, "extras": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        loaded = {}
        for name in args.models:
            loaded[name] = load_model(name, pretrained=False)
            files = [export(loaded[name], tmp / f"{name}_dense.onnx", 1.0)]
            for r in args.ratios:
                tag = f"{name}_{int(round(r * 100)):03d}"
                files.append(export(loaded[name], tmp / f"{tag}_heads.onnx", r))
                files.append(export(loaded[name], tmp / f"{tag}_embed.onnx", r, prune_embed=True))
            results["models"][name] = timed(files, args)
            print(f"{name}: timed {len(files)} files ({time.perf_counter() - start:.0f} s)", flush=True)
        if not args.skip_extras:
            t = loaded.get("swin_t") or load_model("swin_t", pretrained=False)
            files = [export(t, tmp / "swin_t_050_embed_round1.onnx", 0.5, prune_embed=True)]
            files += [export(t, tmp / f"swin_t_050_embed_round{k}.onnx", 0.5, prune_embed=True, round_to=k)
                      for k in args.round_to if k > 1]
            results["extras"]["round_to"] = timed(files, args)
            s = loaded.get("swin_s") or load_model("swin_s", pretrained=False)
            files = [export(t, tmp / "swin_t_dense.onnx", 1.0)]
            budget = f"{read_report(files[0]).original.macs / 1e9:.4f}G"
            files += [export(s, tmp / "swin_s_to_t_heads.onnx", budget),
                      export(s, tmp / "swin_s_to_t_embed.onnx", budget, prune_embed=True)]
            results["extras"]["large_vs_small"] = timed(files, args)
            files = with_and_without_slim(t, tmp, "swin_t_dense", 1.0) + with_and_without_slim(t, tmp, "swin_t_050", 0.5)
            results["extras"]["onnxslim"] = timed(files, args)
            print(f"extras done ({time.perf_counter() - start:.0f} s)", flush=True)
    results["wall_s"] = time.perf_counter() - start
    first = next(iter(results["models"].values()))
    results["runtime"] = {k: first[k] for k in ("onnxruntime", "provider", "threads", "graph_optimization") if k in first}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [f"`{results['command']}` ({results['date']}, onnxruntime {results['runtime'].get('onnxruntime')}, "
             f"CPU provider, {args.threads} threads, all graph optimisations; wall {results['wall_s'] / 60:.1f} min). "
             "Random weights (latency does not depend on them). `_heads`: heads + MLP channels pruned; `_embed`: "
             "residual channels too. Speed-up and ideal are against the first row of each table, measured "
             "interleaved in one run.", ""]
    lines += goals(results)
    for name, res in results["models"].items():
        lines += table(res["rows"], name)
    if "round_to" in results["extras"]:
        lines += table(results["extras"]["round_to"]["rows"], "swin_t, R = 0.5, --prune-embed: --round-to 1 / 8 / 16 / 32")
        lines += table(results["extras"]["large_vs_small"]["rows"],
                       "Large pruned versus small dense: swin_s pruned to swin_t's MACs (goal: latency <= 1.05x dense swin_t)")
        lines += table(results["extras"]["onnxslim"]["rows"],
                       "onnxslim in the export: swin_t dense and R = 0.5, without (`_noslim`) and with (`_slim`) it")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(results, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
