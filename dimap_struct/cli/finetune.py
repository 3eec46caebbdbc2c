"""`dimap-finetune`: prune like dimap-compress, recover accuracy with distillation, export ONNX.

    dimap-finetune reference --flops 0.5 -o r_ft.onnx
    torchrun --nproc_per_node 2 -m dimap_struct.cli.finetune reference --flops 0.5 -o r_ft.onnx

Under torchrun every process prunes the same way, trains on its shard with DDP, and rank 0
writes the outputs. After each full epoch rank 0 saves OUT.resume.pt; `--resume` continues from
it after an interruption. The ONNX / JSON outputs appear only when everything succeeded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from ..options import FinetuneOptions
from .common import Parser, add_common_flags, add_config_flag, default_data, main_of, progress


def build_parser() -> argparse.ArgumentParser:
    p = Parser("dimap-finetune", "Prune a Swin to a MACs budget, fine-tune it with knowledge distillation "
               "from the unpruned model plus the labels, export ONNX.", __doc__.split("\n\n")[1])
    FinetuneOptions.add_flags(p)
    add_config_flag(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return main_of("dimap-finetune", build_parser, _run, argv)


def resume_path(output: str) -> Path:
    return Path(output).with_suffix(".resume.pt")


def _run(args: argparse.Namespace) -> int:
    # deferred (also below): start-up; --help and bad flags load none of these (torch, timm,
    # onnxruntime, rich)
    from rich.console import Console

    from ..deploy.evaluate import accuracy, torch_classifier
    from ..deploy.export import write_model_and_report
    from ..pipeline import check_outputs, compress
    from ..prune.replay import load_any
    from ..recover.finetune import finetune, init_distributed, read_state, save_state, weights_digest

    options = FinetuneOptions.from_args(args, args.config)
    if options.model is None or options.output is None:
        raise UserError("give a MODEL and -o OUT.onnx")
    paths = check_outputs(options)
    data = default_data(options.data)
    ctx = init_distributed()
    console = Console(stderr=True)
    step = progress(console) if ctx.is_main and not args.quiet else None
    cfg = options.training()
    identity = {"recipe": options.recipe(), "world_size": ctx.world_size}
    state = None
    resume = resume_path(options.output)
    if options.resume:
        if not resume.is_file():
            raise UserError(f"--resume: no {resume} to continue from")
        state = read_state(resume)
        if state["meta"] != identity:
            raise UserError(f"--resume: {resume} was saved by a different command (model, target, criterion, "
                            "seed, process count or training options differ)")

    loaded = load_any(options.model, checkpoint=options.checkpoint, pretrained=options.pretrained, seed=options.seed,
                      model_kwargs=options.model_kwargs)
    prune_options = options.pruning()
    teacher, config = loaded.model, loaded.data_config
    classes = loaded.adapter.num_classes
    quantize = _quantize_request(options, config, data) if ctx.is_main else None  # bad data fails before training

    def evaluate(model):
        return accuracy(torch_classifier(model, config, "", classes), data, split="eval")["top1"]

    on_step = None
    if ctx.is_main and not args.quiet:
        on_step = _train_progress(console)
    if options.prune_steps > 1:
        return _run_in_rounds(args, options, loaded, prune_options, cfg, ctx, data, paths, evaluate, step, on_step,
                              quantize)
    result = compress(loaded, prune_options, on_step=step)
    student = result.model
    report = result.report
    report.recipe = options.recipe()

    before = {}
    if ctx.is_main:
        before = {"teacher_top1": evaluate(teacher), "pruned_top1": evaluate(student)}

    def save(epoch: int, st: dict) -> None:
        if ctx.is_main:
            save_state(resume, st, identity)

    try:
        summary = finetune(student, teacher, data, config, cfg, ctx, seed=options.seed, state=state,
                           on_epoch_end=save, on_step=on_step)
    except KeyboardInterrupt:
        if resume.is_file():
            print(f"dimap-finetune: interrupted; rerun with --resume to continue from {resume}", file=sys.stderr)
        raise
    digest = weights_digest(student)
    if args.debug or not args.quiet:  # each rank's digest: the check that DDP ranks agree
        print(f"rank {ctx.rank}: weights sha256 {digest}", file=sys.stderr, flush=True)
    if ctx.is_main:
        after = evaluate(student)
        report.finetune = {**summary, **before, "finetuned_top1": after, "data": str(data),
                           "weights_sha256": digest, "resumed": state is not None}
        write_model_and_report(student, report, paths, prune_options.opset, force=options.force,
                               plain=options.plain_export, quantize=quantize)
        resume.unlink(missing_ok=True)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            f = report.finetune
            print(f"{report.source.model} -> {paths[0]} ({report.achieved.ratio:.3f} of the MACs, "
                  f"criterion {report.criterion})\n"
                  f"  top-1: unpruned {f['teacher_top1']:.2f}%  pruned {f['pruned_top1']:.2f}%  "
                  f"fine-tuned {f['finetuned_top1']:.2f}%  ({f['steps']} steps x {cfg.batch_size} x "
                  f"{ctx.world_size} process(es))")
    if ctx.distributed:
        import torch.distributed as dist  # deferred: start-up, as in _run

        dist.barrier()
        dist.destroy_process_group()
    return 0


def _run_in_rounds(args, options, loaded, prune_options, cfg, ctx, data, paths, evaluate, step, on_step,
                   quantize) -> int:
    """--steps K: K rounds of prune + KD (`pipeline.prune_in_rounds`), each with 1/K of the budget."""
    # deferred: start-up, as in _run
    from ..deploy.export import write_model_and_report
    from ..pipeline import prune_in_rounds
    from ..recover.finetune import finetune, weights_digest

    k_steps = options.prune_steps
    per_round = cfg.replace(epochs=cfg.epochs / k_steps,
                            max_steps=None if cfg.max_steps is None else cfg.max_steps // k_steps)
    teacher_top1 = evaluate(loaded.model) if ctx.is_main else None

    def train(model, k):
        summary = finetune(model, loaded.model, data, loaded.data_config, per_round, ctx, seed=options.seed + k,
                           on_step=on_step)
        if ctx.is_main:
            summary["top1"] = evaluate(model)
        return summary

    student, report, rounds = prune_in_rounds(loaded, prune_options, k_steps, train, on_step=step)
    report.recipe = options.recipe()
    digest = weights_digest(student)
    if args.debug or not args.quiet:  # each rank's digest: the check that DDP ranks agree
        print(f"rank {ctx.rank}: weights sha256 {digest}", file=sys.stderr, flush=True)
    if ctx.is_main:
        after = rounds[-1]["training"]["top1"]
        report.iterative["rounds"] = [{**r, "top1_after_kd": rr["training"]["top1"]}
                                      for r, rr in zip(report.iterative["rounds"], rounds)]
        report.finetune = {"steps": sum(r["training"]["steps"] for r in rounds), "teacher_top1": teacher_top1,
                           "finetuned_top1": after, "data": str(data), "weights_sha256": digest, "resumed": False,
                           "config": per_round.as_dict(), "per_round": True}
        write_model_and_report(student, report, paths, prune_options.opset, force=options.force,
                               plain=options.plain_export, quantize=quantize)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            trail = "  ".join(f"{r['achieved_ratio']:.3f}: {r['top1_after_kd']:.2f}%" for r in report.iterative["rounds"])
            print(f"{report.source.model} -> {paths[0]} ({report.achieved.ratio:.3f} of the MACs in {k_steps} rounds, "
                  f"criterion {report.criterion})\n  top-1: unpruned {teacher_top1:.2f}%  after each round {trail}")
    if ctx.distributed:
        import torch.distributed as dist  # deferred: start-up, as in _run

        dist.barrier()
        dist.destroy_process_group()
    return 0


def _train_progress(console):
    """A bar over all optimiser steps: loss, steps done, steps per second, elapsed time, ETA."""
    # deferred: start-up, as in _run
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    class StepsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.2f} steps/s" if task.speed else "- steps/s", style="progress.data.speed")

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), StepsPerSecond(),
                   TimeElapsedColumn(), "eta", TimeRemainingColumn(), console=console, transient=True)
    task = None

    def update(step: int, total: int, loss: float) -> None:
        nonlocal task
        if task is None or step == 1:  # a new run (with --steps K, a new round)
            if task is not None:
                bar.remove_task(task)
            bar.start()
            task = bar.add_task("fine-tuning", total=total)
        bar.update(task, completed=step, description=f"fine-tuning (loss {loss:.3f})")
        if step >= total:
            bar.stop()

    return update


def _quantize_request(options, data_config, data):
    """`--quantize` of dimap-finetune: static INT8 calibrates on --calib-data, else on the training data."""
    from ..deploy.quantize import make_request  # deferred: start-up, as in _run

    return make_request(options.quantize, options.calib_data or data, data_config, options.calib_images,
                        options.seed)


if __name__ == "__main__":
    sys.exit(main())

