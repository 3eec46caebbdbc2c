"""Iterative pruning: `dimap-finetune --steps K` reaches a MACs target in K rounds of prune +
knowledge distillation instead of one cut.

Round k (1..K) prunes the current model to the fraction R^(k/K) of the original MACs (a
geometric schedule: every round removes the same fraction of what is left) and then trains it,
always distilling from the unpruned model. Each round's budget is a MACs count, passed as a
number (`prune.budget.Budget.absolute`). The report is the last round's, restated against the
original model: the original model is the source, and the blocks' kept heads are traced back to
the original's indices. `iterative` records each round.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from ..errors import UserError
from ..models import LoadedModel
from ..models.adapters import adapter_for_model
from ..options import CompressOptions
from ..prune.budget import Budget
from ..prune.costs import build_cost_model
from ..prune.select import Selection
from ..report.build import build_report, cut_row
from ..report.schema import MACS_NOTE, Report, ResidualRow
from .compression import compress_to


def schedule(ratio: float, steps: int) -> list[float]:
    """The MACs fraction after each round: ratio ** (k / steps), k = 1..steps."""
    return [ratio ** (k / steps) for k in range(1, steps + 1)]


def prune_in_rounds(loaded: LoadedModel, options: CompressOptions, steps: int,
                    train: Callable[[nn.Module, int], dict],
                    on_step: Callable[[str], object] | None = None) -> tuple[nn.Module, Report, list[dict]]:
    """Prune `loaded` to `options`' target in `steps` rounds; `train(model, round)` fine-tunes
    the model in place after each cut and returns a summary. Returns the final model, its report
    and one record per round."""
    original_macs = build_cost_model(loaded.model, loaded.adapter, loaded.adapter.blocks(),
                                     tuple(loaded.data_config["input_size"])).count().macs
    final = options.budget.target_macs(original_macs)
    ratios = schedule(final / original_macs, steps)
    current_model, model, first, last, selection, kept, rounds = loaded, loaded.model, None, None, None, None, []
    for k, ratio in enumerate(ratios, 1):
        current = last.pruned.macs if last is not None else original_macs
        if last is not None and ratio * original_macs >= current and k < steps:
            # an earlier round already went this far (its cut overshot): train, cut next round
            rounds.append({"round": k, "target_ratio": ratio, "achieved_ratio": current / original_macs,
                           "training": train(model, k)})
            continue
        budget = Budget.absolute(round(min(ratio * original_macs, current)))
        try:
            result = compress_to(current_model, options.replace(output=None, save_pt=None), budget, on_step)
        except UserError as err:
            raise UserError(f"--steps {steps}, round {k} (to {ratio:.3f} of the MACs): {err}") from None
        first = first or result.report
        kept = _compose(kept, result.selection.plan.heads)
        summary = train(result.model, k)
        rounds.append({"round": k, "target_ratio": ratio, "achieved_ratio": result.report.pruned.macs / original_macs,
                       "training": summary})
        model, last, selection = result.model, result.report, result.selection
        # the next round prunes this model as the same loaded model (name, weights, notes), so
        # its report keeps the source's provenance
        current_model = dataclasses.replace(loaded, model=model, adapter=adapter_for_model(model))
    report = _against_original(loaded, options, first, last, selection, kept, final, steps, rounds)
    return model, report, rounds


def _compose(kept: list[list[int]] | None, plan_heads: list[list[int]]) -> list[list[int]]:
    """Original head indices kept after this round (`plan_heads` index the previous model)."""
    if kept is None:
        return [list(h) for h in plan_heads]
    return [[before[i] for i in now] for before, now in zip(kept, plan_heads)]


def _against_original(loaded: LoadedModel, options: CompressOptions, first: Report, last: Report,
                      selection: Selection, kept_heads, final: int, steps: int, rounds: list[dict]) -> Report:
    original = first.original
    blocks = [cut_row(a.name, a.stage, a.heads_before, a.mlp_width_before, heads, b.mlp_width)
              for a, b, heads in zip(first.blocks, last.blocks, kept_heads)]
    residual = None if last.residual is None else [
        ResidualRow(stage=b.stage, width_before=a.width_before, width=b.width)
        for a, b in zip(first.residual or last.residual, last.residual)]
    return build_report(
        loaded, options.recipe(), granularity=last.granularity, architecture=last.architecture,
        criterion=last.criterion, criterion_summary=last.criterion_summary, score=last.score, policy=last.policy,
        score_mode=last.score_mode,
        target=options.budget.text, target_macs=final, original=original, pruned=last.pruned,
        on_target=abs(last.pruned.macs - final) <= 0.01 * original.macs, runtime_macs=last.runtime_macs,
        blocks=blocks, residual=residual, selection=last.selection, verification=last.verification,
        notes=[MACS_NOTE], later_notes=[selection.note] if selection.note else [],
        recovery=last.recovery, timings_s=last.timings_s,
        iterative={"steps": steps, "rounds": [{k: v for k, v in r.items() if k != "training"} for r in rounds]})
