"""The whole job: load -> groups -> score -> select -> cut -> verify -> recover -> export ->
quantize -> report.

`compress` is the Python API behind the `dimap-compress` command; every stage lives in its
own package (`models`, `prune`, `recover`, `deploy`, `report`) and `compress` runs them in order.
`prune_in_rounds` runs `compress` K times with training between the cuts
(`dimap-finetune --steps K`) and restates the last round's report against the original model.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from torch import nn

from . import __version__
from .data import build_dataset, data_fingerprint, num_classes
from .deploy.export import write_model_and_report
from .deploy import latency_probe
from .deploy.quantize import make_request
from .errors import UserError
from .files import check_output, same_file, staged
from .models import LoadedModel
from .models.adapters import adapter_for_model
from .models.checkpoint import pruned_bytes
from .models.lean import LeanUnsupported
from .options import CompressOptions
from .prune.budget import target_macs
from .prune.calibration import RIDGE, calibration_images, collect_stats
from .prune.costs import CostModel, build_cost_model
from .prune.criteria import Calibration, ScoreContext, get_criterion
from .prune.cut import cut
from .prune.replay import load_any
from .prune.residual import residual_options
from .prune.select import Selection, select_to_budget
from .prune.unstructured import prune_weights
from .prune.verify import mask, max_abs_diff, probe_input
from .recover.oneshot import RecoveryReport, recover
from .report.schema import (MACS_NOTE, RANDOM_WEIGHTS_NOTE, Achieved, Architecture, BlockRow, Counts, Report,
                            ResidualRow, Source, Target, plain_config)

current_stage: str | None = None
"""The label of the stage running now (for the CLI's one-line error, e.g. when memory runs out)."""
MASK_TOLERANCE = 1e-3
"""Max abs logit difference allowed between the pruned model and the masked original."""


@dataclass
class CompressionResult:
    """What `compress` returns: the pruned model (an ordinary nn.Module, eval mode), the
    selection that made it (None for weight granularity) and the typed report (also written as
    JSON beside the ONNX file)."""

    model: nn.Module
    selection: Selection | None
    report: Report
    options: CompressOptions
    onnx_path: Path | None = None
    json_path: Path | None = None
    pt_path: Path | None = None


@dataclass
class Steps:
    """Timing of the pipeline's stages, with an optional callback for progress display (it
    may return a context manager that spans the stage)."""

    on_step: Callable[[str], object] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        global current_stage
        ctx = self.on_step(label) if self.on_step else None
        start = time.perf_counter()
        current_stage = label
        with ctx if ctx is not None else nullcontext():
            yield
        current_stage = None
        self.seconds[label] = round(time.perf_counter() - start, 3)


def make_options(model, options: CompressOptions | float | str | None, overrides: dict) -> CompressOptions:
    """The validated options of one `compress` call: `options` (or a bare budget, shorthand for
    flops) updated by keyword overrides, with `model` recorded when it is a name or a path."""
    if isinstance(options, CompressOptions):
        base = options
    elif options is None:
        base = CompressOptions()
    elif isinstance(options, (int, float, str)) and not isinstance(options, bool):
        base = CompressOptions(flops=options)
    else:
        raise UserError(f"options must be CompressOptions or a MACs budget, not {type(options).__name__}")
    if isinstance(model, (str, os.PathLike)):
        overrides = {"model": os.fspath(model), **overrides}
    return base.replace(**overrides) if overrides else base


def compress(model: str | nn.Module | LoadedModel, options: CompressOptions | float | str | None = None, *,
             on_step: Callable[[str], object] | None = None, **overrides) -> CompressionResult:
    """Prune a Swin to a MACs budget (or, with granularity 'weight', mask single weights).

    model: a name for `models.load_model` ('swin_b', 'reference', 'torchvision:swin_t', a timm
        name with a pretrained tag), a pruned checkpoint path, an nn.Module of a supported
        family, or a `LoadedModel` (neither of the last two is modified).
    options: a `CompressOptions` (every option, validated), or a budget as shorthand for
        `flops`; keyword `overrides` update it (`compress("swin_t", 0.5, pretrained=False)`).
    on_step: called with each stage's label; may return a context manager (progress display).
    Raises UserError for bad options or input, before any heavy work where it can.
    """
    options = make_options(model, options, overrides)
    paths = check_outputs(options)
    steps = Steps(on_step)
    with steps("load model"):
        loaded = load_any(model, checkpoint=options.checkpoint, pretrained=options.pretrained, seed=options.seed,
                          model_kwargs=options.model_kwargs)
    quantize = None
    if paths is not None and options.quantize is not None:
        with steps("read quantization images"):  # before the work, so bad data fails at once
            quantize = make_request(options.quantize, options.calib_data, loaded.data_config, options.calib_images,
                                    options.seed)
    if options.granularity == "weight":
        with steps("score and mask single weights"):
            net, report = prune_weights(loaded, options)
        selection = None
    else:
        net, selection, report = _prune_structured(loaded, options, steps)
    result = CompressionResult(net, selection, report, options)
    also = []  # the .pt is published with the ONNX file and its report, as one set
    if options.save_pt is not None:
        with steps("serialise pruned checkpoint"):
            payload = pruned_bytes(net, report.architecture, report.data_config, report.source.weights)
        also.append((Path(options.save_pt), lambda tmp: tmp.write_bytes(payload)))
        result.pt_path = Path(options.save_pt)
        report.pruned_checkpoint = str(options.save_pt)
    report.timings_s = steps.seconds
    if paths is not None:
        label = "export ONNX and check parity" + (f", quantize ({quantize.scheme})" if quantize else "")
        with steps(label):
            write_model_and_report(net, report, paths, options.opset, force=options.force,
                                   plain=options.plain_export, quantize=quantize, also=also)
        result.onnx_path, result.json_path = paths
    elif also:
        with steps("save pruned checkpoint"), staged([also[0][0]], options.force) as (tmp,):
            also[0][1](tmp)
    return result


def check_outputs(options, inputs: tuple = ()) -> tuple[Path, Path] | None:
    """Check every output path before any work (`files.check_output`: none may be an input,
    the model file, the checkpoint or `inputs`); return (ONNX path, JSON report path) or None."""
    sources = (*input_files(options), *inputs)
    if getattr(options, "save_pt", None) is not None:
        check_output(options.save_pt, options.force, (".pt", ".safetensors"), "--save-pt", sources)
    if options.output is None:
        return None
    path = check_output(options.output, options.force, (".onnx",), inputs=sources)
    json_path = check_output(path.with_suffix(".json"), options.force, what="report", inputs=sources)
    if getattr(options, "save_pt", None) is not None:
        if same_file(options.save_pt, path) or same_file(options.save_pt, json_path):
            raise UserError(f"--save-pt {options.save_pt} names the ONNX output or its report; give another name")
    return path, json_path


def input_files(options) -> tuple[str, ...]:
    """The files `options` read: a model given as a path, the checkpoint."""
    found = []
    model = getattr(options, "model", None)
    if isinstance(model, str) and os.path.lexists(model):
        found.append(model)
    if getattr(options, "checkpoint", None) is not None:
        found.append(options.checkpoint)
    return tuple(found)


def _prune_structured(loaded: LoadedModel, options: CompressOptions, steps: Steps):
    net, adapter = loaded.model, loaded.adapter
    input_size = tuple(loaded.data_config["input_size"])
    criterion = get_criterion(options.criterion, options.policy)
    with steps("find groups and count MACs"):
        blocks = adapter.blocks()
        costs = build_cost_model(net, adapter, blocks, input_size)
        before = costs.count()
    target = target_macs(options.target, before.macs)

    stats = None
    if options.calib_data is not None and (options.recovery != "none" or criterion.score.needs_stats):
        # statistics of the unpruned model: what recovery refits to, and what `needs_stats` scores read
        with steps(f"calibration statistics ({options.calib_images} images)"):
            stats = collect_stats(net, blocks, _calibration_images(loaded, options), seed=options.seed)
    score = criterion.score
    with steps(f"score ({criterion.name})"):
        if score.prepare is not None:
            score.prepare(net, Calibration(options.calib_data, loaded.data_config, options.calib_batches,
                                           options.seed, adapter.num_classes))
        context = ScoreContext(score_mode=options.score_mode, seed=options.seed, costs=costs, stats=stats)
        scores = criterion.scores(blocks, context)
        embed = residual_options(adapter, criterion, context) if options.prune_embed else {}
        if score.cleanup is not None:
            score.cleanup(net)
    budget, latency = {}, None
    if options.latency is not None:
        with steps("per-block latency model (timed once per machine, then cached)"):
            latency, latency_source = _latency_model(loaded, options)
        budget = {"cost": latency.predict, "target_cost": options.latency * latency.unpruned_ms}
    with steps("select to the MACs budget" if latency is None else "select to the latency budget"):
        selection = select_to_budget(
            scores, costs,
            head_weights=[4 * b.attn.head_dim * b.attn.in_features for b in blocks],
            channel_weights=[2 * b.mlp.fc1.in_features for b in blocks],
            target_macs=target, policy=criterion.policy, head_dims=[b.attn.head_dim for b in blocks],
            min_heads=options.min_heads, min_mlp=options.min_mlp, round_to=options.round_to,
            min_embed=options.min_embed, **embed, **budget)
    if latency is not None and selection.achieved_cost > selection.target_cost + 0.01 * latency.unpruned_ms:
        raise UserError(f"--latency {options.latency:g}: the minimums (--min-heads, --min-mlp"
                        f"{', --min-embed' if options.prune_embed else ''}) allow no less than "
                        f"{selection.achieved_cost / latency.unpruned_ms:.3f} of the predicted dense latency")
    plan = selection.plan

    with steps("cut heads and channels"):
        reference = copy.deepcopy(net)
        mask(reference, adapter.__class__(reference), plan)
        cut(net, adapter, plan, input_size)
        net.eval()
    with steps("verify mask equivalence"):
        mask_diff = max_abs_diff(net, reference, probe_input(input_size))
        del reference
        if not mask_diff <= MASK_TOLERANCE:
            raise RuntimeError(f"pruned model differs from the masked original by {mask_diff:.3g}: surgery bug")
        after = costs.count(plan.head_counts, plan.mlp_widths, plan.residual_widths)
        measured_params = sum(p.numel() for p in net.parameters())
        if measured_params != after.params:
            raise RuntimeError(f"parameter count {measured_params} != analytic {after.params}: surgery bug")
    report = _structured_report(loaded, options, costs, before, after, selection, mask_diff)
    if latency is not None:
        report.latency = {"target": options.latency, "batch": options.latency_batch, "threads": options.latency_threads,
                          "dense_ms": latency.dense_ms, "predicted_ms": selection.achieved_cost,
                          "predicted_unpruned_ms": latency.unpruned_ms,
                          "predicted_ratio": selection.achieved_cost / latency.unpruned_ms,
                          "model_source": latency_source, "model": latency.to_dict()}
    if stats is not None and options.recovery != "none":
        with steps(f"recover ({options.recovery})"):
            report.recovery = _recover(net, adapter, plan, stats, options)
    return net, selection, report


def _latency_model(loaded: LoadedModel, options: CompressOptions):
    """(`prune.latency.LatencyModel`, its source: 'cache', 'measured' or 'measured (cache entry ... was
    damaged: ...)') for `loaded` (`deploy.latency_probe`);
    UserError when its family or input size has no lean form to time."""
    try:
        model, source = latency_probe.load_or_measure(  # looked up on the module: tests replace it
            loaded.model.eval(), loaded.adapter, tuple(loaded.data_config["input_size"]), options.latency_batch,
            options.latency_threads, family=loaded.adapter.family)
    except LeanUnsupported as err:
        raise UserError(f"--latency times the lean export, and this model has none: {err}") from None
    except ValueError as err:  # too few distinct widths in a stage to fit its latency model
        raise UserError(f"--latency: cannot fit a latency model for this model ({err}); use --flops") from None
    return model, source


def _calibration_images(loaded: LoadedModel, options: CompressOptions):
    dataset = build_dataset(options.calib_data, "train", loaded.data_config, labels_required=False)
    classes = num_classes(dataset)
    if loaded.adapter.num_classes is not None and classes > loaded.adapter.num_classes:
        raise UserError(f"--calib-data {options.calib_data} has {classes} classes, the model predicts only "
                        f"{loaded.adapter.num_classes}: is it the model's data?")
    return calibration_images(options.calib_data, loaded.data_config, options.calib_images, options.seed,
                              dataset=dataset)


def _recover(net, adapter, plan, stats, options: CompressOptions) -> dict:
    """Correct the cut model's proj and fc2 layers in place (docs/method.md section 8)."""
    start = time.perf_counter()
    layers = recover(adapter.blocks(), plan, stats, options.recovery, RIDGE, plan.residual)
    result = RecoveryReport(options.recovery, options.calib_images, str(options.calib_data),
                            data_fingerprint(options.calib_data), RIDGE, time.perf_counter() - start, layers)
    return result.to_dict()


def _structured_report(loaded: LoadedModel, options: CompressOptions, costs: CostModel, before: Counts,
                       after: Counts, selection: Selection, mask_diff: float) -> Report:
    plan = selection.plan
    criterion = get_criterion(options.criterion, options.policy)
    notes = [MACS_NOTE] + ([RANDOM_WEIGHTS_NOTE] if loaded.random_init else []) + \
        ([selection.note] if selection.note else [])
    blocks = [BlockRow(name=bc.name, stage=bc.stage, heads_before=bc.num_heads, heads=len(h),
                       mlp_width_before=bc.mlp_width, mlp_width=len(m), attention_kept=len(h) / bc.num_heads,
                       mlp_kept=len(m) / bc.mlp_width, kept_heads=h)
              for bc, h, m in zip(costs.blocks, plan.heads, plan.mlp)]
    residual = None if plan.residual is None else [
        ResidualRow(stage=s, width_before=full, width=len(kept))
        for s, (full, kept) in enumerate(zip(costs.residual_widths, plan.residual))]
    return Report(
        package_version=__version__, granularity="structured", source=Source.of(loaded),
        data_config=plain_config(loaded.data_config), recipe=options.recipe(),
        architecture=Architecture(loaded.name, loaded.model_kwargs, plan.head_counts, plan.mlp_widths,
                                  plan.residual_widths),
        criterion=criterion.name, criterion_summary=criterion.summary, score=criterion.score.name,
        policy=criterion.policy, score_mode=options.score_mode if criterion.score.uses_score_mode else None,
        target=Target(flops=str(options.target), macs=selection.target_macs,
                      ratio=selection.target_macs / before.macs),
        achieved=Achieved(macs=after.macs, ratio=after.macs / before.macs, params=after.params,
                          params_ratio=after.params / before.params, on_target=selection.on_target),
        original=before, pruned=after, runtime_macs=after.macs, blocks=blocks, residual=residual,
        selection={"policy": selection.policy, "removed_weight_fraction_per_module": selection.removed_weight_fraction,
                   "thresholds": selection.thresholds,
                   "constraints": {"min_heads": options.min_heads, "min_mlp": options.min_mlp,
                                   "round_to": options.round_to,
                                   "min_embed": options.min_embed if options.prune_embed else None}},
        verification={"mask_equivalence_max_abs_diff": mask_diff}, notes=notes)


# --------------------------------------------------------------------------- iterative pruning
# `dimap-finetune --steps K` reaches a MACs target in K rounds of prune + knowledge distillation
# instead of one cut. Round k (1..K) prunes the current model to the fraction R^(k/K) of the
# original MACs (a geometric schedule: every round removes the same fraction of what is left) and
# then trains it with 1/K of the KD budget, always distilling from the unpruned model. The report
# is the last round's, restated against the original model. The original model is the source,
# and the blocks' kept heads are traced back to the original's indices. `iterative` records each
# round.
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
    final = target_macs(options.target, original_macs)
    ratios = schedule(final / original_macs, steps)
    current_model, model, first, report, kept, rounds = loaded, loaded.model, None, None, None, []
    for k, ratio in enumerate(ratios, 1):
        current = report.pruned.macs if report is not None else original_macs
        if report is not None and ratio * original_macs >= current and k < steps:
            # an earlier round already went this far (its cut overshot): train, cut next round
            rounds.append({"round": k, "target_ratio": ratio, "achieved_ratio": current / original_macs,
                           "training": train(model, k)})
            continue
        budget = f"{min(ratio * original_macs, current) / 1e9:.12g}G"
        try:
            result = compress(current_model, options.replace(flops=budget, output=None, save_pt=None), on_step=on_step)
        except UserError as err:
            raise UserError(f"--steps {steps}, round {k} (to {ratio:.3f} of the MACs): {err}") from None
        first = first or result.report
        kept = _compose(kept, result.selection.plan.heads)
        summary = train(result.model, k)
        rounds.append({"round": k, "target_ratio": ratio, "achieved_ratio": result.report.pruned.macs / original_macs,
                       "training": summary})
        model, report = result.model, result.report
        # the next round prunes this model as the same loaded model (name, weights, notes), so
        # its report keeps the source's provenance
        current_model = dataclasses.replace(loaded, model=model, adapter=adapter_for_model(model))
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
        ResidualRow(stage=b.stage, width_before=a.width_before, width=b.width)
        for a, b in zip(first.residual or last.residual, last.residual)]
    return dataclasses.replace(
        last, target=Target(flops=str(options.target), macs=final, ratio=final / original_macs),
        achieved=Achieved(macs=last.pruned.macs, ratio=ratio, params=last.pruned.params,
                          params_ratio=last.pruned.params / first.original.params,
                          on_target=abs(last.pruned.macs - final) <= 0.01 * original_macs),
        original=first.original, blocks=blocks, residual=residual,
        iterative={"steps": steps, "rounds": [{k: v for k, v in r.items() if k != "training"} for r in rounds]})
