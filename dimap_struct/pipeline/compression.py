"""One compression: load -> groups -> score -> select -> cut -> verify -> recover -> export ->
quantize -> report.

`compress` is the Python API behind the `dimap-compress` command; every stage lives in its
own package (`models`, `prune`, `recover`, `deploy`, `report`) and `compress` runs them in order.
"""
from __future__ import annotations

import copy
import functools
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from torch import nn

from ..data import build_dataset, data_fingerprint, num_classes
from ..deploy.export import write_model_and_report
from ..deploy import latency_probe
from ..deploy.evaluate import AGREEMENT_WARNING, agreement, logits
from ..deploy.quantize import labelled_sample, make_request
from ..errors import UserError
from ..files import check_output, same_file, staged
from ..models import LoadedModel
from ..models.checkpoint import pruned_bytes
from ..models.lean import LeanUnsupported
from ..options import CompressOptions, Options
from ..prune.budget import Budget
from ..prune.calibration import RIDGE, calibration_images, collect_stats
from ..recover.sequential import SEQUENTIAL_RIDGE, recover_sequential
from ..prune.costs import CostModel, build_cost_model
from ..prune.criteria import Calibration, ScoreContext, get_criterion
from ..prune.cut import cut
from ..prune.replay import load_any
from ..prune.residual import residual_options
from ..prune.select import Selection, select_to_budget
from ..prune.unstructured import prune_weights
from ..prune.verify import mask, max_abs_diff, probe_input
from ..recover.oneshot import RecoveryReport, recover
from ..report.build import build_report, cut_row
from ..report.schema import MACS_NOTE, Architecture, Counts, Report, ResidualRow

current_stage: str | None = None
"""The label of the stage running now (for the CLI's one-line error, e.g. when memory runs out)."""
MASK_TOLERANCE = 1e-3
"""Max abs logit difference allowed between the pruned model and the masked original."""
LATENCY_TOLERANCE = 0.02
"""|measured fraction - R| at which a --latency plan is kept without another check: inside the
0.03 that --latency promises, with room for the timing's own noise."""


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


def make_options(model, options, overrides: dict, kind: type[Options] = CompressOptions):
    """The validated options of one call: `options` (a `kind`, or a bare budget, shorthand for
    flops) updated by keyword overrides, with `model` recorded when it is a name or a path."""
    if isinstance(options, kind):
        base = options
    elif options is None:
        base = kind()
    elif isinstance(options, (int, float, str)) and not isinstance(options, bool):
        base = kind(flops=options)
    else:
        raise UserError(f"options must be {kind.__name__} or a MACs budget, not {type(options).__name__}")
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
    return compress_to(model, options, options.budget, on_step)


def compress_to(model, options: CompressOptions, budget: Budget,
                on_step: Callable[[str], object] | None = None) -> CompressionResult:
    """`compress` with validated `options` to `budget` instead of theirs (the rounds of `--steps`
    compute theirs)."""
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
            net, report = prune_weights(loaded, options, budget)
        selection = None
    else:
        net, selection, report = _prune_structured(loaded, options, budget, steps)
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


def _prune_structured(loaded: LoadedModel, options: CompressOptions, budget: Budget, steps: Steps):
    net, adapter = loaded.model, loaded.adapter
    input_size = tuple(loaded.data_config["input_size"])
    criterion = get_criterion(options.criterion, options.policy,
                              latency=options.latency is not None and not options.prune_embed)
    with steps("find groups and count MACs"):
        blocks = adapter.blocks()
        costs = build_cost_model(net, adapter, blocks, input_size)
        before = costs.count()
    target = budget.target_macs(before.macs)

    stats = None
    if options.calib_data is not None and (options.recovery in ("refit", "bias") or criterion.score.needs_stats):
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
    by_latency, latency = {}, None
    if options.latency is not None:
        with steps("per-block latency model (timed once per machine, then cached)"):
            latency, latency_source = _latency_model(loaded, options)
        by_latency = {"latency": latency, "target_cost": options.latency * latency.unpruned_ms}
    select = functools.partial(
        select_to_budget, scores, costs,
        head_weights=[4 * b.attn.head_dim * b.attn.in_features for b in blocks],
        channel_weights=[2 * b.mlp.fc1.in_features for b in blocks],
        target_macs=target, policy=criterion.policy, head_dims=[b.attn.head_dim for b in blocks],
        min_heads=options.min_heads, min_mlp=options.min_mlp, round_to=options.round_to,
        min_embed=options.min_embed, **embed, **by_latency)
    with steps("select to the MACs budget" if latency is None else "select to the latency budget"):
        selection = select()
    if latency is not None and selection.target_cost + 0.01 * latency.unpruned_ms < min(selection.floor_cost,
                                                                                         selection.achieved_cost):
        # a plan near the target that lands over it because one removal takes a whole branch is
        # kept (the report says how far it is); only a target under what the floors allow is refused
        raise UserError(f"--latency {options.latency:g}: the minimums (--min-heads, --min-mlp"
                        f"{', --min-embed' if options.prune_embed else ''}) allow no less than "
                        f"{selection.floor_cost / latency.unpruned_ms:.3f} of the predicted dense latency")
    checks = []
    if latency is not None and options.latency_checks and not options.prune_embed:
        with steps(f"time the plan against the unpruned model (up to {options.latency_checks} times)"):
            selection, checks = _measured_to_target(select, selection, latency.unpruned_ms, loaded, options)
    plan = selection.plan

    held_out = None
    if options.calib_data is not None:
        with steps("dense outputs on held-out images"):
            held_out = _held_out(loaded, options)
            if held_out is not None:
                held_out = (*held_out, logits(net, held_out[0]))
    dense = copy.deepcopy(net) if options.calib_data is not None and options.recovery == "sequential" else None
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
    report = _structured_report(loaded, options, budget, costs, before, after, selection, mask_diff)
    if latency is not None:
        report.latency = {"target": options.latency, "batch": options.latency_batch, "threads": options.latency_threads,
                          "dense_ms": latency.dense_ms, "predicted_ms": selection.achieved_cost,
                          "predicted_unpruned_ms": latency.unpruned_ms,
                          "predicted_ratio": selection.achieved_cost / latency.unpruned_ms,
                          "model_source": latency_source, "model": latency.to_dict()}
        if checks:
            report.latency.update(checks=checks, measured_ratio=min((c["measured_ratio"] for c in checks),
                                                                     key=lambda m: abs(m - options.latency)))
    if options.calib_data is not None and options.recovery != "none":
        with steps(f"recover ({options.recovery})"):
            report.recovery = _recover(net, adapter, plan, stats, options, dense, loaded)
            del dense
    if held_out is not None:
        with steps("estimate accuracy"):
            images, labels, source, dense = held_out
            report.accuracy_estimate = agreement(dense, logits(net, images), labels, source)
            if report.accuracy_estimate["agreement_top1"] < AGREEMENT_WARNING:
                report.notes.append(f"warning: the pruned model agrees with the dense model on only "
                                    f"{report.accuracy_estimate['agreement_top1']:.1f}% of "
                                    f"{len(images)} held-out images: this plan breaks the model "
                                    "(try a larger budget, --calib-data recovery or dimap-finetune)")
    return net, selection, report


def _measured_to_target(select, selection, unpruned_ms: float, loaded: LoadedModel, options: CompressOptions):
    """(the selection to keep, what each check saw): time `selection`'s plan against the unpruned
    model (`latency_probe.measured_fraction`) and, while it lands more than `LATENCY_TOLERANCE`
    from --latency R, select again with the target cost scaled by R over the measured fraction
    (the table's error at that plan, taken as a ratio); at most --latency-checks timings. The
    plan measured closest to R is kept. Each check: the target, predicted and measured fractions."""
    input_size = tuple(loaded.data_config["input_size"])
    spec = loaded.adapter.lean_spec(input_size)
    tried = []
    target = selection.target_cost
    with latency_probe.exported_unpruned(spec, input_size, options.latency_batch) as unpruned:
        for _ in range(options.latency_checks):
            measured = latency_probe.measured_fraction(spec, selection.plan.head_counts, selection.plan.mlp_widths,
                                                       input_size, options.latency_batch, options.latency_threads,
                                                       unpruned=unpruned)
            tried.append((selection, {"target_ratio": target / unpruned_ms,
                                      "predicted_ratio": selection.achieved_cost / unpruned_ms,
                                      "measured_ratio": measured}))
            if abs(measured - options.latency) <= LATENCY_TOLERANCE or len(tried) == options.latency_checks:
                break
            target *= options.latency / measured
            selection = select(target_cost=target)
    kept, _ = min(tried, key=lambda t: abs(t[1]["measured_ratio"] - options.latency))
    return kept, [check for _, check in tried]


def _held_out(loaded: LoadedModel, options: CompressOptions):
    """(images, labels or None, source) of the calibration data's train split that calibration
    does not use: the next `--calib-images` of its seeded permutation (as INT8's check), fewer
    when the split is short; None when nothing is left."""
    images, labels = labelled_sample(options.calib_data, loaded.data_config, options.calib_images, options.seed,
                                     skip=options.calib_images, fewer=True)
    if not len(images):
        return None
    return images, labels, f"train split of {options.calib_data}, images not used to calibrate"


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


def _recover(net, adapter, plan, stats, options: CompressOptions, dense, loaded: LoadedModel) -> dict:
    """Correct the cut model in place (docs/method.md section 8): its proj and fc2 layers from the
    dense statistics, or (sequential) every kept layer against `dense`, the unpruned copy."""
    start = time.perf_counter()
    if options.recovery == "sequential":
        layers = recover_sequential(dense, net, adapter.__class__(dense).blocks(), adapter.blocks(), plan,
                                    _calibration_images(loaded, options), SEQUENTIAL_RIDGE, seed=options.seed)
    else:
        layers = recover(adapter.blocks(), plan, stats, options.recovery, RIDGE, plan.residual)
    result = RecoveryReport(options.recovery, options.calib_images, str(options.calib_data),
                            data_fingerprint(options.calib_data),
                            SEQUENTIAL_RIDGE if options.recovery == "sequential" else RIDGE,
                            time.perf_counter() - start, layers)
    return result.to_dict()


def _structured_report(loaded: LoadedModel, options: CompressOptions, budget: Budget, costs: CostModel,
                       before: Counts, after: Counts, selection: Selection, mask_diff: float) -> Report:
    plan = selection.plan
    criterion = get_criterion(options.criterion, selection.policy)  # the policy that ran (--latency's default)
    blocks = [cut_row(bc.name, bc.stage, bc.num_heads, bc.mlp_width, h, len(m))
              for bc, h, m in zip(costs.blocks, plan.heads, plan.mlp)]
    residual = None if plan.residual is None else [
        ResidualRow(stage=s, width_before=full, width=len(kept))
        for s, (full, kept) in enumerate(zip(costs.residual_widths, plan.residual))]
    return build_report(
        loaded, options.recipe(), granularity="structured",
        architecture=Architecture(loaded.name, loaded.model_kwargs, plan.head_counts, plan.mlp_widths,
                                  plan.residual_widths),
        criterion=criterion.name, criterion_summary=criterion.summary, score=criterion.score.name,
        policy=criterion.policy, score_mode=options.score_mode if criterion.score.uses_score_mode else None,
        target=budget.text, target_macs=selection.target_macs, original=before, pruned=after,
        on_target=selection.on_target, runtime_macs=after.macs, blocks=blocks, residual=residual,
        selection={"policy": selection.policy, "removed_weight_fraction_per_module": selection.removed_weight_fraction,
                   "thresholds": selection.thresholds,
                   "constraints": {"min_heads": options.min_heads, "min_mlp": options.min_mlp,
                                   "round_to": options.round_to,
                                   "min_embed": options.min_embed if options.prune_embed else None}},
        verification={"mask_equivalence_max_abs_diff": mask_diff}, notes=[MACS_NOTE],
        later_notes=[selection.note] if selection.note else [])
