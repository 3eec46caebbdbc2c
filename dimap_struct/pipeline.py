"""The whole job: load -> groups -> score -> select -> cut -> verify -> export -> report.

`compress` is the Python API behind the `dimap-compress` command.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from torch import nn

from .adapters import BlockSite
from .budget import check_fraction, target_macs
from .costs import CostModel, Counts, build_cost_model
from .criteria import get_criterion, score
from .errors import UserError
from .checkpoint import pruned_spec
from .export import export_onnx
from .report import RANDOM_WEIGHTS_NOTE, source_section
from .files import atomic_output, check_new_file
from .models import LoadedModel, load_model, wrap_model
from .select import Selection, select_to_budget
from .surgery import apply_plan
from .residual import cut_residual, mask_residual, residual_options
from .verify import max_abs_diff, probe_input, zero_removed

MASK_TOLERANCE = 1e-3
"""Max abs logit difference allowed between the pruned model and the zeroed original."""


@dataclass
class CompressionResult:
    """What `compress` returns: the pruned model (an ordinary nn.Module, eval mode), the plan
    that made it, and the report (also written as JSON beside the ONNX file)."""

    model: nn.Module
    selection: Selection | None
    """None for weight granularity (no structure is selected)."""
    report: dict
    onnx_path: Path | None = None
    json_path: Path | None = None
    source: dict = field(default_factory=dict)
    """How to rebuild the unpruned model: source_model, model_kwargs, data_config, weights."""
    pt_path: Path | None = None


@dataclass
class _Steps:
    """Timing of the pipeline's stages, with an optional callback for progress display."""

    on_step: Callable[[str], object] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        ctx = self.on_step(label) if self.on_step else None
        start = time.perf_counter()
        with ctx if ctx is not None else _null():
            yield
        self.seconds[label] = round(time.perf_counter() - start, 3)


@contextmanager
def _null():
    yield


def check_output(output: str | os.PathLike, force: bool) -> tuple[Path, Path]:
    """Validate an ONNX output path before any work; return (path, the JSON report's path beside it)."""
    path = check_new_file(output, force, (".onnx",))
    return path, check_new_file(path.with_suffix(".json"), force)


def compress(
    model: str | nn.Module | LoadedModel,
    flops: float | str | None = None,
    *,
    granularity: str = "structured",
    params: float | str | None = None,
    output: str | os.PathLike | None = None,
    force: bool = False,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = True,
    seed: int = 0,
    criterion: str = "dimap",
    score_mode: str = "group",
    min_heads: int = 1,
    min_mlp: int = 8,
    round_to: int = 1,
    prune_embed: bool = False,
    min_embed: int = 16,
    calib_data: str | os.PathLike | None = None,
    calib_batches: int = 4,
    save_pt: str | os.PathLike | None = None,
    opset: int = 17,
    model_kwargs: dict | None = None,
    on_step: Callable[[str], object] | None = None,
) -> CompressionResult:
    """Prune attention heads and MLP channels of a Swin to `flops` of its MACs.

    model: a timm name / alias ('swin_b', 'swin_base_patch4_window7_224.ms_in22k_ft_in1k'), an
        already-built model of a supported family, or a `load_model` result (neither is modified).
    flops: fraction of the original MACs to keep (0 < R <= 1) or an absolute budget ('7.3G');
        default 0.5.
    granularity: 'structured' (heads and channels removed) or 'weight' (the paper's setting:
        single weights zeroed, see `unstructured`; target `flops` or `params`, the fraction of
        prunable weights kept). Weight granularity returns `selection=None` and is not faster.
    output: write a dense ONNX model there (and the report as JSON beside it, same stem).
    checkpoint / pretrained / seed: where weights come from (see `models.load_model`).
    criterion, score_mode: group importance (`criteria.CRITERIA`; score_mode 'group' or
        'weight' for DIMAP, see `scoring.group_scores`).
    calib_data, calib_batches: data for data-driven criteria ('taylor'): an MNIST directory or
        an image folder, and how many batches of 32 to use.
    min_heads, min_mlp, round_to: structure constraints per block (see `select`).
    prune_embed, min_embed: also remove residual (embedding) channels of every stage, keeping at
        least `min_embed` per stage (see `residual`); round_to applies to them too.
    save_pt: also write a pruned PyTorch checkpoint there (`checkpoint.load_pruned` rebuilds it).
    on_step: called with each stage's label; may return a context manager (progress display).
    """
    if granularity == "weight":
        return _compress_weights(model, flops=flops, params=params, output=output, force=force,
                                 checkpoint=checkpoint, pretrained=pretrained, seed=seed, opset=opset,
                                 model_kwargs=model_kwargs, on_step=on_step)
    if granularity != "structured":
        raise UserError(f"unknown granularity '{granularity}'; choose structured or weight")
    if params is not None:
        raise UserError("--params is a target of --granularity weight; structured pruning takes --flops")
    flops = 0.5 if flops is None else flops
    check_fraction(flops)
    for name, value, low in (("min_heads", min_heads, 1), ("min_mlp", min_mlp, 1), ("round_to", round_to, 1),
                             ("min_embed", min_embed, 1)):
        if int(value) != value or value < low:
            raise UserError(f"{name.replace('_', '-')} must be an integer >= {low}, got {value}")
    spec = get_criterion(criterion)
    if spec.needs_data and calib_data is None:
        raise UserError(f"criterion '{criterion}' is data-driven: give --calib-data PATH "
                        "(an MNIST directory or an ImageFolder) for its calibration batches")
    paths = check_output(output, force) if output is not None else None
    if save_pt is not None:
        check_new_file(save_pt, force, (".pt", ".safetensors"), "--save-pt")
    steps = _Steps(on_step)

    with steps("load model"):
        loaded = load_any(model, checkpoint=checkpoint, pretrained=pretrained, seed=seed, model_kwargs=model_kwargs)
    net, adapter = loaded.model, loaded.adapter
    input_size = tuple(loaded.data_config["input_size"])

    with steps("find groups and count MACs"):
        blocks = adapter.blocks()
        costs = build_cost_model(net, adapter, blocks, input_size)
        before = costs.count()
    target = target_macs(flops, before.macs)

    with steps(f"score ({criterion})"):
        if spec.needs_data:
            from .taylor import accumulate_gradients

            accumulate_gradients(net, calib_data, loaded.data_config, batches=calib_batches, seed=seed)
        scores = score(criterion, blocks, score_mode=score_mode, seed=seed, costs=costs)
        embed = residual_options(adapter, criterion, seed) if prune_embed else {}
        net.zero_grad(set_to_none=True)
    with steps("select to the MACs budget"):
        selection = select_to_budget(
            scores, costs,
            head_weights=[4 * b.attn.head_dim * b.attn.qkv.in_features for b in blocks],
            channel_weights=[2 * b.mlp.fc1.in_features for b in blocks],
            target_macs=target, policy=spec.policy, head_dims=[b.attn.head_dim for b in blocks],
            min_heads=min_heads, min_mlp=min_mlp, round_to=round_to, min_embed=min_embed, **embed)
    plan = selection.plan

    with steps("cut heads and channels"):
        reference = copy.deepcopy(net)
        ref_adapter = adapter.__class__(reference)
        zero_removed(ref_adapter.blocks(), plan)
        apply_plan(net, adapter, blocks, plan, input_size)
        if plan.residual is not None:
            for site, ref_site, keep in zip(adapter.residual_sites(), ref_adapter.residual_sites(), plan.residual):
                mask_residual(reference, ref_site, keep)
                cut_residual(adapter, site, keep)
        net.eval()
    with steps("verify mask equivalence"):
        probe = probe_input(input_size)
        mask_diff = max_abs_diff(net, reference, probe)
        del reference
        if not mask_diff <= MASK_TOLERANCE:
            raise RuntimeError(f"pruned model differs from the zeroed original by {mask_diff:.3g}: surgery bug")
        after = costs.count(plan.head_counts, plan.mlp_widths, plan.residual_widths)
        measured_params = sum(p.numel() for p in net.parameters())
        if measured_params != after.params:
            raise RuntimeError(f"parameter count {measured_params} != analytic {after.params}: surgery bug")

    report = build_report(loaded, blocks, costs, before, after, selection, flops, criterion, score_mode,
                          dict(min_heads=min_heads, min_mlp=min_mlp, round_to=round_to, prune_embed=prune_embed,
                               min_embed=min_embed if prune_embed else None), mask_diff)
    result = CompressionResult(net, selection, report, source=source_of(loaded))
    report["architecture"] = pruned_spec(result.source, plan)
    if save_pt is not None:
        from .checkpoint import save_pruned

        with steps("save pruned checkpoint"):
            save_pruned(net, report["architecture"], save_pt)
        result.pt_path = Path(save_pt)
        report["pruned_checkpoint"] = str(save_pt)
    if paths is not None:
        with steps("export ONNX and check parity"):
            write_outputs(net, report, paths, input_size, opset, steps.seconds)
        result.onnx_path, result.json_path = paths
    report["timings_s"] = steps.seconds
    return result


def source_of(loaded: LoadedModel) -> dict:
    return {"source_model": loaded.name, "model_kwargs": loaded.model_kwargs,
            "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in loaded.data_config.items()},
            "weights": loaded.weights}


def _compress_weights(model, *, flops, params, output, force, checkpoint, pretrained, seed, opset,
                      model_kwargs, on_step) -> CompressionResult:
    from .unstructured import prune_weights

    if flops is not None:
        check_fraction(flops)
    paths = check_output(output, force) if output is not None else None
    steps = _Steps(on_step)
    with steps("load model"):
        loaded = load_any(model, checkpoint=checkpoint, pretrained=pretrained, seed=seed, model_kwargs=model_kwargs)
    with steps("score and mask single weights"):
        net, report = prune_weights(loaded, flops=flops, params=params)
    result = CompressionResult(net, None, report, source=source_of(loaded))
    report["architecture"] = pruned_spec(result.source)  # dense: the source architecture
    if paths is not None:
        with steps("export ONNX and check parity"):
            write_outputs(net, report, paths, tuple(loaded.data_config["input_size"]), opset, steps.seconds)
        result.onnx_path, result.json_path = paths
    report["timings_s"] = steps.seconds
    return result


def load_any(model: str | nn.Module | LoadedModel, *, checkpoint=None, pretrained: bool = True, seed: int = 0,
             model_kwargs: dict | None = None) -> LoadedModel:
    """A name goes through `load_model`; an nn.Module or LoadedModel is copied (the caller's
    stays intact)."""
    if isinstance(model, LoadedModel):
        net = copy.deepcopy(model.model)
        return dataclasses.replace(model, model=net, adapter=model.adapter.__class__(net))
    if isinstance(model, nn.Module):
        return wrap_model(copy.deepcopy(model))
    from .checkpoint import is_pruned_checkpoint, load_pruned

    if is_pruned_checkpoint(model):
        net, spec = load_pruned(model, with_spec=True)
        loaded = wrap_model(net, spec["source_model"])
        return dataclasses.replace(loaded, weights=f"pruned checkpoint {Path(model).name} (from {spec['weights']})",
                                   data_config=spec["data_config"], model_kwargs=spec["model_kwargs"])
    return load_model(model, checkpoint=checkpoint, pretrained=pretrained, seed=seed, **(model_kwargs or {}))


def write_outputs(net: nn.Module, report: dict, paths: tuple[Path, Path], input_size, opset: int,
                  timings: dict) -> None:
    """Export `net` to ONNX (checked, parity-tested) and the report as JSON, both atomically:
    neither file appears unless both are complete. Adds the 'onnx' section to `report`."""
    onnx_path, json_path = paths
    with ExitStack() as stack:
        tmp_onnx = stack.enter_context(atomic_output(onnx_path, ".onnx"))
        tmp_json = stack.enter_context(atomic_output(json_path, ".json"))
        parity = export_onnx(net, tmp_onnx, input_size, onnx_metadata(report), opset=opset)
        report["onnx"] = {"path": str(onnx_path), "opset": opset, "dynamic_batch": True,
                          "parity_max_abs_diff": parity, "bytes": tmp_onnx.stat().st_size}
        report["timings_s"] = timings
        tmp_json.write_text(json.dumps(report, indent=2) + "\n")


def onnx_metadata(report: dict) -> dict:
    """The subset of the report stored inside the ONNX file (metadata key 'dimap_struct')."""
    keys = ("package_version", "granularity", "source_model", "weights", "architecture", "criterion", "score_mode",
            "target", "achieved", "original", "pruned", "input", "constraints", "residual")
    meta = {k: report[k] for k in keys if k in report}
    block_keys = ("name", "stage", "kept_heads", "mlp_width", "kept_weight_fraction")
    meta["blocks"] = [{k: b[k] for k in block_keys if k in b} for b in report["blocks"]]
    return meta


def _counts_dict(c: Counts) -> dict:
    return {"macs": c.macs, "params": c.params, "macs_by_stage": c.macs_by_stage,
            "macs_by_module": c.macs_by_module, "params_by_stage": c.params_by_stage,
            "params_by_module": c.params_by_module}


def build_report(loaded: LoadedModel, blocks: list[BlockSite], costs: CostModel, before: Counts,
                 after: Counts, selection: Selection, flops, criterion: str, score_mode: str,
                 constraints: dict, mask_diff: float) -> dict:
    plan = selection.plan
    notes = ["MACs are multiply-accumulates (the DIMAP paper's 'FLOPs' are MACs): Linear and Conv "
             "layers plus the window-attention matmuls q.k^T and attn.v; norms, softmax and biases "
             "are not counted."]
    if loaded.random_init:
        notes.append(RANDOM_WEIGHTS_NOTE)
    if selection.note:
        notes.append(selection.note)
    return {
        **source_section(loaded),
        "granularity": "structured",
        "criterion": criterion,
        "criterion_summary": get_criterion(criterion).summary,
        "score_mode": score_mode,
        "constraints": constraints,
        "target": {"flops": str(flops), "macs": selection.target_macs,
                   "ratio": selection.target_macs / before.macs},
        "achieved": {"macs": after.macs, "ratio": after.macs / before.macs, "on_target": selection.on_target,
                     "params_ratio": after.params / before.params},
        "selection": {"policy": selection.policy, "removed_weight_fraction_per_module": selection.removed_weight_fraction,
                      "thresholds": selection.thresholds},
        "original": _counts_dict(before),
        "pruned": _counts_dict(after),
        "blocks": [
            {"name": b.name, "stage": b.stage, "heads_before": bc.num_heads, "heads": len(h),
             "kept_heads": h, "mlp_width_before": bc.mlp_width, "mlp_width": len(m)}
            for b, bc, h, m in zip(blocks, costs.blocks, plan.heads, plan.mlp)
        ],
        "residual": None if plan.residual is None else [
            {"stage": s, "width_before": full, "width": len(kept)}
            for s, (full, kept) in enumerate(zip(costs.residual_widths, plan.residual))],
        "verification": {"mask_equivalence_max_abs_diff": mask_diff},
        "notes": notes,
    }
