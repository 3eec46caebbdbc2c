"""`build_report`: the one place a run's Report is made, for both granularities and for the
rounds of `--steps`.

What every report shares is stated here, from the loaded source model and the recipe: the
package version, the source, the data config, the random-weights note, the target and the
achieved ratios against the original counts. The callers bring what their pruning found.
"""
from __future__ import annotations

from .. import __version__
from .schema import RANDOM_WEIGHTS_NOTE, Achieved, Architecture, BlockRow, Counts, Report, Source, Target, plain_config


def build_report(loaded, recipe: dict, *, granularity: str, architecture: Architecture, criterion: str,
                 criterion_summary: str, score_mode: str | None, target: str, target_macs: int | None,
                 original: Counts, pruned: Counts, runtime_macs: int, blocks: list[BlockRow], residual, selection: dict,
                 verification: dict, notes: list[str], later_notes: list[str] = (), on_target: bool | None = None,
                 kept_prunable_fraction: float | None = None, **extra) -> Report:
    """The report of pruning `loaded` (a `models.LoadedModel`: the unpruned source) with `recipe`.

    target: the budget as the user wrote it; target_macs: the MACs it asks for (None: a
        `--params` target of weight granularity, a fraction of the prunable weights).
    notes: the method's notes; the random-weights note follows them when the source has random
        weights, then `later_notes`.
    extra: further Report fields (e.g. recovery, timings_s, iterative)."""
    return Report(
        package_version=__version__, granularity=granularity, source=Source.of(loaded),
        data_config=plain_config(loaded.data_config), recipe=recipe, architecture=architecture,
        criterion=criterion, criterion_summary=criterion_summary, score_mode=score_mode,
        target=(Target(params=target) if target_macs is None
                else Target(flops=target, macs=target_macs, ratio=target_macs / original.macs)),
        achieved=Achieved(macs=pruned.macs, ratio=pruned.macs / original.macs, params=pruned.params,
                          params_ratio=pruned.params / original.params, on_target=on_target,
                          kept_prunable_fraction=kept_prunable_fraction),
        original=original, pruned=pruned, runtime_macs=runtime_macs, blocks=blocks, residual=residual,
        selection=selection, verification=verification,
        notes=[*notes, *([RANDOM_WEIGHTS_NOTE] if loaded.random_init else []), *later_notes], **extra)


def cut_row(name: str, stage: int, heads_before: int, mlp_width_before: int, kept_heads: list[int],
            mlp_width: int) -> BlockRow:
    """The row of a block whose heads and MLP channels were cut (structured granularity)."""
    return BlockRow(name=name, stage=stage, heads_before=heads_before, heads=len(kept_heads),
                    mlp_width_before=mlp_width_before, mlp_width=mlp_width,
                    attention_kept=len(kept_heads) / heads_before, mlp_kept=mlp_width / mlp_width_before,
                    kept_heads=list(kept_heads))
