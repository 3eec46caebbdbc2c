"""Apply the decision rule for the default criterion (docs/method.md section 4) to accuracy results.

Reads the JSON that `benchmarks.accuracy` wrote for each reference model, ranks the candidate
rules in every cell (model x R x {zero-shot, after KD}; rank 1 = highest top-1, equal top-1 share
the mean of their ranks), and orders the rules by mean rank, ties to the higher mean top-1. With `--speed`, only the rules
whose median batch-1 efficiency over the run's models (swin_t, swin_s, swin_b) reaches
`--min-efficiency` in that `benchmarks.speed_by_criterion` run are ranked (the speed-aware
rule of docs/method.md section 4). Writes benchmarks/results/decision.{md,json} and prints the table.

    .venv/bin/python -m benchmarks.decide
    .venv/bin/python -m benchmarks.decide --results benchmarks/results/accuracy_rules.json other.json
    .venv/bin/python -m benchmarks.decide --speed benchmarks/results/speed_candidates.json

The digits results come from `python -m benchmarks.accuracy --criteria <the candidates> --out
benchmarks/results/accuracy_rules` (the candidates only, with today's code); the CIFAR-10 ones
from `python -m benchmarks.accuracy --model reference-cifar10`.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from .common import RESULTS, ROOT, row
CANDIDATES = ("dimap-paper", "lamp-global", "dimap-cost", "dimap-bound", "dimap-bound-sq", "magnitude-global",
              "l1", "l2", "dimap-cost-global", "dimap-split")
"""The data-free rules the decision rule names (docs/method.md section 4)."""
STAGES = ("zero_shot", "finetuned")


def ranks(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 for the highest value; equal values share the mean of the ranks they span."""
    order = sorted(values, key=lambda k: -values[k])
    out, i = {}, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def cells(result: dict, candidates: tuple[str, ...]) -> list[tuple[str, dict[str, float]]]:
    """(label, {rule: top-1}) for every R and stage of one accuracy run; every candidate must be present."""
    model = result["meta"].get("model", "reference-mnist")
    by = {(e["criterion"], e["ratio"]): e for e in result["summary"]}
    out = []
    for ratio in sorted({e["ratio"] for e in result["summary"]}, reverse=True):
        for stage in STAGES:
            missing = [c for c in candidates if (c, ratio) not in by or by[c, ratio][stage] is None]
            if missing:
                raise SystemExit(f"{model} R={ratio} {stage}: no result for {', '.join(missing)}")
            out.append((f"{model} R={ratio} {stage}", {c: by[c, ratio][stage] for c in candidates}))
    return out


SPEED_MODELS = ("swin_t", "swin_s", "swin_b")
"""The models whose median efficiency the speed-aware rule takes (docs/method.md section 4)."""


def efficiencies(speed: dict, candidates: tuple[str, ...], batch: int = 1) -> dict[str, float]:
    """Median over swin_t, swin_s and swin_b of each candidate's efficiency at `batch` (speed-up over
    the speed-up its MACs promise) in one speed_by_criterion.py run at R = 0.5; SystemExit if the run
    is another one or a candidate was not timed on every model."""
    if sorted(speed["models"]) != sorted(SPEED_MODELS) or speed.get("ratio", 0.5) != 0.5:
        raise SystemExit(f"speed run: the rule needs {', '.join(SPEED_MODELS)} at R = 0.5, not "
                         f"{', '.join(speed['models'])} at R = {speed.get('ratio')}")
    out = {}
    for c in candidates:
        rows = [row(res, f"{name}_{c}.onnx", batch) for name, res in speed["models"].items()]
        if any(r is None or r["efficiency"] is None for r in rows):
            raise SystemExit(f"speed run: no batch-{batch} efficiency for {c} on every model")
        out[c] = statistics.median(r["efficiency"] for r in rows)
    return out


def decide(results: list[dict], candidates: tuple[str, ...] = CANDIDATES) -> dict:
    table = [(label, values, ranks(values)) for r in results for label, values in cells(r, candidates)]
    mean_rank = {c: statistics.mean(rk[c] for _, _, rk in table) for c in candidates}
    mean_top1 = {c: statistics.mean(v[c] for _, v, _ in table) for c in candidates}
    order = sorted(candidates, key=lambda c: (mean_rank[c], -mean_top1[c]))
    return {"winner": order[0], "order": order, "mean_rank": mean_rank, "mean_top1": mean_top1,
            "cells": [{"cell": label, "top1": values, "rank": rk} for label, values, rk in table]}


def apply_rule(results: list[dict], speed_run: dict | None = None, floor: float = 0.80) -> tuple[dict, dict | None]:
    """The decision rule on accuracy `results` and, if given, a speed_by_criterion.py run:
    (the decision, with the winner among the rules whose efficiency reaches `floor`; the speed
    part, or None without a speed run)."""
    decision = decide(results, CANDIDATES)
    if speed_run is None:
        return decision, None
    eff = efficiencies(speed_run, CANDIDATES)
    eligible = tuple(c for c in CANDIDATES if eff[c] >= floor)
    if not eligible:
        raise SystemExit(f"no candidate reaches efficiency {floor:g}")
    # the winner is ranked among the eligible rules only; the table keeps every rule's ranks
    among = decide(results, eligible)
    decision["winner"] = among["winner"]
    return decision, {"models": list(speed_run["models"]), "floor": floor, "efficiency": eff,
                      "order": among["order"], "mean_rank": among["mean_rank"]}


def markdown(decision: dict, sources: list[str], speed: dict | None = None) -> str:
    order = decision["order"]
    among = (f" among the rules whose median batch-1 efficiency is at least {speed['floor']:g} (ranked among "
             "themselves)") if speed else ""
    lines = [f"Decision rule (docs/method.md section 4) applied to {', '.join(f'`{s}`' for s in sources)}: "
             f"**{decision['winner']}** has the best mean rank over {len(decision['cells'])} cells{among}.", ""]
    if speed:
        lines += [f"Median batch-1 efficiency at R = 0.5 over {', '.join(speed['models'])} (`{speed['source']}`), "
                  "and the mean rank among the rules that reach the floor:", "",
                  "| rule | efficiency | mean rank among them |", "|---|---|---|"]
        ranked = speed["mean_rank"]
        lines += [f"| {c} | {e:.2f} | " + (f"{ranked[c]:.2f}" if c in ranked else "-") + " |"
                  for c, e in sorted(speed["efficiency"].items(), key=lambda kv: -kv[1])]
        lines += ["", f"Every rule's cells and mean rank among all {len(order)}:", ""]
    lines += ["| cell | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for cell in decision["cells"]:
        lines.append(f"| {cell['cell']} | " + " | ".join(f"{cell['top1'][c]:.2f} ({cell['rank'][c]:g})"
                                                        for c in order) + " |")
    lines.append("| **mean rank** | " + " | ".join(f"**{decision['mean_rank'][c]:.2f}**" for c in order) + " |")
    lines.append("| mean top-1 | " + " | ".join(f"{decision['mean_top1'][c]:.2f}" for c in order) + " |")
    return "\n".join(lines) + "\n"


def _relative(path: Path) -> str:
    root, full = ROOT, path.resolve()
    return str(full.relative_to(root)) if full.is_relative_to(root) else str(path)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decide", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", nargs="+", type=Path,
                   default=[RESULTS / "accuracy_rules.json", RESULTS / "accuracy_cifar10.json"],
                   help="accuracy.py results, one per reference model (default: the digits run of the "
                        "candidate rules and the CIFAR-10 run)")
    p.add_argument("--speed", type=Path, help="a speed_by_criterion.py JSON: rank only the rules whose median "
                                               "batch-1 efficiency reaches --min-efficiency")
    p.add_argument("--min-efficiency", type=float, default=0.80, help="the efficiency floor (default 0.80)")
    p.add_argument("--out", type=Path, default=RESULTS / "decision", help="output stem (.md, .json)")
    args = p.parse_args()
    for path in args.results + ([args.speed] if args.speed else []):
        if not path.exists():
            raise SystemExit(f"{path}: not found; run python -m benchmarks.accuracy "
                             "(or python -m benchmarks.speed_by_criterion) first")
    results = [json.loads(path.read_text()) for path in args.results]
    run = json.loads(args.speed.read_text()) if args.speed else None
    decision, speed = apply_rule(results, run, args.min_efficiency)
    if speed is not None:
        speed = {"source": _relative(args.speed), **speed}
    sources = [_relative(path) for path in args.results]
    text = markdown(decision, sources, speed)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"sources": sources, "speed": speed, **decision},
                                                        indent=2) + "\n")
    print(text)
    from dimap_struct.prune.criteria import DEFAULT_RULE

    if decision["winner"] != DEFAULT_RULE:
        print(f"note: the package's default `dimap` stands for {DEFAULT_RULE}, not {decision['winner']}: if this "
              "result is the one to keep, set DEFAULT_RULE in dimap_struct/prune/criteria/aliases.py "
              "(tests/test_default_decision.py fails until they agree)")


if __name__ == "__main__":
    main()
