"""`finetune`: prune like `compress`, recover accuracy by knowledge distillation from the
unpruned model plus the labels, evaluate, and export: the Python API behind `dimap-finetune`.

Under torchrun every process calls it with its `recover.finetune.DistContext`: each prunes the
same way and trains on its shard of the data, and the main rank evaluates and writes the
outputs. With `prune_steps` K > 1 the cut is made in K rounds (`rounds.prune_in_rounds`), each
trained with 1/K of the budget. The training loop is called in one place, `_Job.train`, so that
another loop can take its place without changing this flow.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from ..data import default_data
from ..deploy.evaluate import accuracy, torch_classifier
from ..deploy.export import write_model_and_report
from ..deploy.quantize import make_request
from ..errors import UserError
from ..models import LoadedModel
from ..models.adapters import adapter_for_model
from ..options import FinetuneOptions, TrainingOptions, resume_path
from ..prune.replay import load_any
from ..prune.unstructured import zero_masks
from ..recover.finetune import (DistContext, autocast_dtype, finetune as train_loop, read_state, save_state,
                                weights_digest)
from ..report.schema import Report
from .compression import check_outputs, compress, make_options
from .rounds import prune_in_rounds


@dataclass
class FinetuneResult:
    """What `finetune` returns: the fine-tuned pruned model (eval mode), its report (with
    `finetune` filled in on the main rank, and `iterative` for rounds), the options, and the
    SHA-256 of the weights (the same on every rank)."""

    model: nn.Module
    report: Report
    options: FinetuneOptions
    weights_sha256: str
    onnx_path: Path | None = None
    json_path: Path | None = None


def finetune(model, options: FinetuneOptions | float | str | None = None, *, ctx: DistContext | None = None,
             on_step: Callable[[str], object] | None = None,
             on_train_step: Callable[[int, int, float], None] | None = None,
             on_interrupted: Callable[[Path], None] | None = None, teacher_top1: float | None = None,
             eval_batch_size: int = 128, **overrides) -> FinetuneResult:
    """Prune `model` (anything `compress` takes) to the budget of `options`, fine-tune it with
    knowledge distillation from the unpruned model, measure top-1 on the eval split of the data,
    and export it (with `output`).

    options: a `FinetuneOptions`, or a budget as shorthand for `flops`; keyword `overrides` update
        it. The data is `data`, else the directory in $DIMAP_DATA.
    ctx: this process in a torchrun launch (`recover.finetune.distributed`); default one process,
        training on the first CUDA device if there is one.
    on_step(label): each pruning stage, as in `compress`; on_train_step(step, total, loss): training.
    on_interrupted(path): training was interrupted with a resume state saved at `path` (at the
        end of the step it arrived in); the interruption then goes on.
    teacher_top1: the unpruned model's top-1, when the caller has measured it (one evaluation less).
    eval_batch_size: images per batch when measuring top-1 (larger is faster, and needs more memory).
    With `output`, the main rank saves the training state (OUT.resume.pt,
    `dimap_struct.options.resume_path`) after each full epoch, every `save_every` steps and when
    a signal stops training; `resume` continues from its step, and it is removed once the outputs
    are written. Raises UserError for bad options or input, before any heavy work where
    it can.
    """
    options = make_options(model, options, overrides, FinetuneOptions)
    paths = check_outputs(options)
    data = default_data(options.data)
    ctx = ctx or DistContext.local()
    autocast_dtype(options.amp, ctx.device)  # checked before any heavy work
    state = _resume_state(options, ctx)
    loaded = load_any(model, checkpoint=options.checkpoint, pretrained=options.pretrained, seed=options.seed,
                      model_kwargs=options.model_kwargs)
    quantize = None
    if ctx.is_main and paths is not None:  # read now, so that bad data fails before training
        # static INT8 calibrates on --calib-data, else on the training data
        quantize = make_request(options.quantize, options.calib_data or data, loaded.data_config,
                                options.calib_images, options.seed)
    job = _Job(loaded, data, options, ctx, on_train_step, eval_batch_size)
    if options.prune_steps > 1:
        student, report, digest = _in_rounds(job, on_step, teacher_top1)
    else:
        student, report, digest = _one_cut(job, on_step, teacher_top1, state, on_interrupted)
    result = FinetuneResult(student, report, options, digest)
    if ctx.is_main and paths is not None:
        write_model_and_report(student, report, paths, options.pruning().opset, force=options.force,
                               plain=options.plain_export, quantize=quantize)
        result.onnx_path, result.json_path = paths
        if options.prune_steps == 1:
            resume_path(options.output).unlink(missing_ok=True)
    return result


@dataclass
class _Job:
    """What both flows share: the unpruned model (the teacher), the data, the options, this
    process, and the one call of the training loop."""

    loaded: LoadedModel
    data: str
    options: FinetuneOptions
    ctx: DistContext
    on_train_step: Callable[[int, int, float], None] | None
    eval_batch_size: int

    def top1(self, model: nn.Module) -> float:
        classifier = torch_classifier(model, self.loaded.data_config, "", self.loaded.adapter.num_classes)
        return accuracy(classifier, self.data, split="eval", batch_size=self.eval_batch_size)["top1"]

    def train(self, student: nn.Module, cfg: TrainingOptions, seed: int, **resume) -> dict:
        """Fine-tune `student` in place (`recover.finetune.finetune`); `resume`: its state,
        on_save and keep_masks."""
        return train_loop(student, self.loaded.model, self.data, self.loaded.data_config, cfg, self.ctx, seed=seed,
                          on_step=self.on_train_step, **resume)


def _one_cut(job: _Job, on_step, teacher_top1, state: dict | None, on_interrupted) -> tuple[nn.Module, Report, str]:
    options, ctx = job.options, job.ctx
    result = compress(job.loaded, options.pruning(), on_step=on_step)
    student, report = result.model, result.report
    report.recipe = options.recipe()
    before = {}
    if ctx.is_main:
        before = {"teacher_top1": job.top1(job.loaded.model) if teacher_top1 is None else teacher_top1,
                  "pruned_top1": job.top1(student)}
    resume = None if options.output is None else resume_path(options.output)

    def save(st: dict) -> None:
        if ctx.is_main and resume is not None:
            save_state(resume, st, _identity(options, ctx))

    masks = zero_masks(adapter_for_model(student).blocks()) if options.granularity == "weight" else None
    try:
        summary = job.train(student, options.training(), options.seed, state=state, on_save=save,
                            keep_masks=masks)
    except KeyboardInterrupt:
        if resume is not None and resume.is_file() and on_interrupted is not None:
            on_interrupted(resume)
        raise
    digest = weights_digest(student)
    if ctx.is_main:
        report.finetune = {**summary, **before, "finetuned_top1": job.top1(student), "data": str(job.data),
                           "weights_sha256": digest, "resumed": state is not None}
    return student, report, digest


def _in_rounds(job: _Job, on_step, teacher_top1) -> tuple[nn.Module, Report, str]:
    """K rounds of prune + KD, each with 1/K of the training budget and its own seed."""
    options, ctx = job.options, job.ctx
    cfg, k_steps = options.training(), options.prune_steps
    per_round = cfg.replace(epochs=cfg.epochs / k_steps,
                            max_steps=None if cfg.max_steps is None else cfg.max_steps // k_steps)
    if ctx.is_main and teacher_top1 is None:
        teacher_top1 = job.top1(job.loaded.model)

    def train(model: nn.Module, k: int) -> dict:
        summary = job.train(model, per_round, options.seed + k)
        if ctx.is_main:
            summary["top1"] = job.top1(model)
        return summary

    student, report, rounds = prune_in_rounds(job.loaded, options.pruning(), k_steps, train, on_step=on_step)
    report.recipe = options.recipe()
    digest = weights_digest(student)
    if ctx.is_main:
        report.iterative["rounds"] = [{**r, "top1_after_kd": rr["training"]["top1"]}
                                      for r, rr in zip(report.iterative["rounds"], rounds)]
        report.finetune = {"steps": sum(r["training"]["steps"] for r in rounds), "teacher_top1": teacher_top1,
                           "finetuned_top1": rounds[-1]["training"]["top1"], "data": str(job.data),
                           "weights_sha256": digest, "resumed": False, "config": per_round.as_dict(),
                           "per_round": True}
    return student, report, digest


def _identity(options: FinetuneOptions, ctx: DistContext) -> dict:
    """What a resume state must have been saved by: the same recipe and images per step. The
    process count, --batch-size and --accum-steps may change as long as --batch-size x processes
    stays: a step's images are the same then (`recover.finetune.EpochBatches`), and the gradients
    add up to the same step within float rounding."""
    recipe = {k: v for k, v in options.recipe().items() if k not in ("batch_size", "accum_steps")}
    return {"recipe": recipe, "images_per_step": options.batch_size * ctx.world_size}


def _resume_state(options: FinetuneOptions, ctx: DistContext) -> dict | None:
    """The state `resume` continues from; UserError when it is missing or another command's."""
    if not options.resume:
        return None
    if options.output is None:
        raise UserError("resume continues from OUT.resume.pt: give the output OUT.onnx")
    path = resume_path(options.output)
    if not path.is_file():
        raise UserError(f"--resume: no {path} to continue from")
    state = read_state(path)
    saved, now = state["meta"], _identity(options, ctx)
    if "world_size" in saved:  # states of 0.2.0 and before named the process count
        raise UserError(f"--resume: {path} was saved by an earlier version of dimap-finetune; start the "
                        "training again without --resume")
    if saved != now:
        raise UserError(f"--resume: {path} was saved by a different command ({_differences(saved, now)})")
    return state


def _differences(saved: dict, now: dict) -> str:
    """What differs between two identities, e.g. "flops 0.6 there, 0.5 here; images per step
    (--batch-size x processes) 64 there, 32 here"."""
    def parts(a: dict, b: dict) -> list[str]:
        out = []
        for key in sorted(set(a) | set(b), key=str):
            x, y = a.get(key, "unset"), b.get(key, "unset")
            if isinstance(x, dict) and isinstance(y, dict):
                out += parts(x, y)
            elif x != y:
                name = "images per step (--batch-size x processes)" if key == "images_per_step" else str(key)
                out.append(f"{name} {x} there, {y} here")
        return out

    found = parts(saved, now)
    return "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "") or "another identity"
