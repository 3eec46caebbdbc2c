"""Apply the decision rule for the default criterion (docs/method.md section 4) to accuracy results.

Reads the JSON that `benchmarks/accuracy.py` wrote for each reference model, ranks the candidate
rules in every cell (model x R x {zero-shot, after KD}; rank 1 = highest top-1, equal top-1 share
the mean of their ranks), and orders the rules by mean rank, ties to the higher mean top-1.
Writes benchmarks/results/decision.{md,json} and prints the table.

    .venv/bin/python benchmarks/decide.py
    .venv/bin/python benchmarks/decide.py --results benchmarks/results/accuracy_rules.json other.json

The digits results come from `benchmarks/accuracy.py --criteria <the candidates> --out
benchmarks/results/accuracy_rules` (the candidates only, with today's code); the CIFAR-10 ones
from `benchmarks/accuracy.py --model reference-cifar10`.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
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


def decide(results: list[dict], candidates: tuple[str, ...] = CANDIDATES) -> dict:
    table = [(label, values, ranks(values)) for r in results for label, values in cells(r, candidates)]
    mean_rank = {c: statistics.mean(rk[c] for _, _, rk in table) for c in candidates}
    mean_top1 = {c: statistics.mean(v[c] for _, v, _ in table) for c in candidates}
    order = sorted(candidates, key=lambda c: (mean_rank[c], -mean_top1[c]))
    return {"winner": order[0], "order": order, "mean_rank": mean_rank, "mean_top1": mean_top1,
            "cells": [{"cell": label, "top1": values, "rank": rk} for label, values, rk in table]}


def markdown(decision: dict, sources: list[str]) -> str:
    order = decision["order"]
    lines = [f"Decision rule (docs/method.md section 4) applied to {', '.join(f'`{s}`' for s in sources)}: "
             f"**{decision['winner']}** has the best mean rank over {len(decision['cells'])} cells.", "",
             "| cell | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for cell in decision["cells"]:
        lines.append(f"| {cell['cell']} | " + " | ".join(f"{cell['top1'][c]:.2f} ({cell['rank'][c]:g})"
                                                        for c in order) + " |")
    lines.append("| **mean rank** | " + " | ".join(f"**{decision['mean_rank'][c]:.2f}**" for c in order) + " |")
    lines.append("| mean top-1 | " + " | ".join(f"{decision['mean_top1'][c]:.2f}" for c in order) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", nargs="+", type=Path,
                   default=[RESULTS / "accuracy_rules.json", RESULTS / "accuracy_cifar10.json"],
                   help="accuracy.py results, one per reference model (default: the digits run of the "
                        "candidate rules and the CIFAR-10 run)")
    p.add_argument("--out", type=Path, default=RESULTS / "decision", help="output stem (.md, .json)")
    args = p.parse_args()
    for path in args.results:
        if not path.exists():
            raise SystemExit(f"{path}: not found; run benchmarks/accuracy.py for that model first")
    decision = decide([json.loads(path.read_text()) for path in args.results])
    sources = [str(path.relative_to(RESULTS.parent.parent)) if path.is_relative_to(RESULTS.parent.parent)
               else str(path) for path in args.results]
    text = markdown(decision, sources)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"sources": sources, **decision}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
