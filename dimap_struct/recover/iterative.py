"""Iterative pruning: reach a MACs target in K rounds of prune + knowledge distillation instead of
one cut (`dimap-finetune --steps K`).

Round k (1..K) prunes the current model to the fraction R^(k/K) of the original MACs (a
geometric schedule: every round removes the same fraction of what is left) and then trains it
with 1/K of the KD budget, always distilling from the unpruned model. The report is the last
round's, restated against the original model. The original model is the source, and the blocks'
kept heads are traced back to the original's indices. `iterative` records each round.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from ..errors import UserError
from ..report.schema import Achieved, Architecture, BlockRow, Report, ResidualRow, Target


def schedule(ratio: float, steps: int) -> list[float]:
    """The MACs fraction after each round: ratio ** (k / steps), k = 1..steps."""
    return [ratio ** (k / steps) for k in range(1, steps + 1)]


def prune_in_rounds(loaded, options, steps: int, train: Callable[[nn.Module, int], dict],
                    on_step=None) -> tuple[nn.Module, Report, list[dict]]:
    """Prune `loaded` (a `models.LoadedModel`) to `options`' target (a `CompressOptions`) in
    `steps` rounds; `train(model, round)` fine-tunes the model in place after each cut and
    returns a summary. Returns the final model, its report and one record per round."""
    from ..pipeline import compress
    from ..prune.budget import target_macs
    from ..prune.costs import build_cost_model

    original_macs = build_cost_model(loaded.model, loaded.adapter, loaded.adapter.blocks(),
                                     tuple(loaded.data_config["input_size"])).count().macs
    final = target_macs(options.target, original_macs)
    ratios = schedule(final / original_macs, steps)
    model, first, report, kept, rounds = loaded, None, None, None, []
    for k, ratio in enumerate(ratios, 1):
        current = report.pruned.macs if report is not None else original_macs
        if report is not None and ratio * original_macs >= current and k < steps:
            # an earlier round already went this far (its cut overshot): train, cut next round
            rounds.append({"round": k, "target_ratio": ratio, "achieved_ratio": current / original_macs,
                           "training": train(model, k)})
            continue
        budget = f"{min(ratio * original_macs, current) / 1e9:.12g}G"
        try:
            result = compress(model, options.replace(flops=budget, output=None, save_pt=None), on_step=on_step)
        except UserError as err:
            raise UserError(f"--steps {steps}, round {k} (to {ratio:.3f} of the MACs): {err}") from None
        first = first or result.report
        kept = _compose(kept, result.selection.plan.heads)
        summary = train(result.model, k)
        rounds.append({"round": k, "target_ratio": ratio, "achieved_ratio": result.report.pruned.macs / original_macs,
                       "training": summary})
        model, report = result.model, result.report
    return model, _against_original(first, report, kept, options, final, original_macs, steps, rounds), rounds


def _compose(kept: list[list[int]] | None, plan_heads: list[list[int]]) -> list[list[int]]:
    """Original head indices kept after this round (`plan_heads` index the previous model)."""
    if kept is None:
        return [list(h) for h in plan_heads]
    return [[before[i] for i in now] for before, now in zip(kept, plan_heads)]


def _against_original(first: Report, last: Report, kept_heads, options, final: int, original_macs: int,
                      steps: int, rounds: list[dict]) -> Report:
    ratio = last.pruned.macs / original_macs
    blocks = [BlockRow(name=a.name, stage=a.stage, heads_before=a.heads_before, heads=b.heads,
                       mlp_width_before=a.mlp_width_before, mlp_width=b.mlp_width,
                       attention_kept=b.heads / a.heads_before, mlp_kept=b.mlp_width / a.mlp_width_before,
                       kept_heads=heads)
              for a, b, heads in zip(first.blocks, last.blocks, kept_heads)]
    residual = None if last.residual is None else [
        ResidualRow(stage=b.stage, width_before=a.width_before if first.residual else b.width_before, width=b.width)
        for a, b in zip(first.residual or last.residual, last.residual)]
    return dataclasses.replace(
        last, source=first.source,
        architecture=Architecture(first.architecture.source_model, first.architecture.model_kwargs,
                                  last.architecture.heads, last.architecture.mlp_widths,
                                  last.architecture.residual_widths),
        target=Target(flops=str(options.target), macs=final, ratio=final / original_macs),
        achieved=Achieved(macs=last.pruned.macs, ratio=ratio, params=last.pruned.params,
                          params_ratio=last.pruned.params / first.original.params,
                          on_target=abs(last.pruned.macs - final) <= 0.01 * original_macs),
        original=first.original, blocks=blocks, residual=residual,
        iterative={"steps": steps, "rounds": [{k: v for k, v in r.items() if k != "training"} for r in rounds]})
