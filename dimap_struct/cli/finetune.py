"""`dimap-finetune`: prune like dimap-compress, recover accuracy with distillation, export ONNX.

    dimap-finetune reference --flops 0.5 -o r_ft.onnx
    torchrun --nproc_per_node 2 -m dimap_struct.cli.finetune reference --flops 0.5 -o r_ft.onnx

Under torchrun every process prunes the same way, trains on its shard with DDP, and rank 0
writes the outputs. Rank 0 saves OUT.resume.pt after each full epoch, every --save-every steps,
and when SIGTERM or Ctrl-C stops training (at the end of the step); `--resume` continues from
its step. The ONNX / JSON outputs appear only when everything succeeded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from ..options import FinetuneOptions, resume_path  # noqa: F401  (resume_path: the file --resume reads)
from .common import Parser, add_common_flags, add_config_flag, main_of, progress


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


def _run(args: argparse.Namespace) -> int:
    # deferred: start-up; --help and bad flags load none of these (torch, timm, onnxruntime, rich)
    from rich.console import Console

    from ..pipeline import finetune
    from ..recover.finetune import distributed

    options = FinetuneOptions.from_args(args, args.config)
    if options.granularity != "structured":
        raise UserError("dimap-finetune prunes structurally; --granularity weight is for dimap-compress")
    if options.model is None or options.output is None:
        raise UserError("give a MODEL and -o OUT.onnx")
    with distributed() as ctx:  # under torchrun: this process's rank in the launch
        console = Console(stderr=True)
        shown = ctx.is_main and not args.quiet
        bar = _train_progress(console, options.batch_size * ctx.world_size) if shown else None
        result = finetune(options.model, options, ctx=ctx, on_step=progress(console) if shown else None,
                          on_train_step=bar, on_interrupted=_interrupted)
        if args.debug or not args.quiet:  # each rank's digest: the check that DDP ranks agree
            print(f"rank {ctx.rank}: weights sha256 {result.weights_sha256}", file=sys.stderr, flush=True)
        if ctx.is_main:
            _print(result, args.json, ctx.world_size)
    return 0


def _interrupted(resume: Path) -> None:
    print(f"dimap-finetune: interrupted; rerun with --resume to continue from {resume}", file=sys.stderr)


def _print(result, as_json: bool, world_size: int) -> None:
    report, f = result.report, result.report.finetune
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.iterative is not None:
        trail = "  ".join(f"{r['achieved_ratio']:.3f}: {r['top1_after_kd']:.2f}%" for r in report.iterative["rounds"])
        print(f"{report.source.model} -> {result.onnx_path} ({report.achieved.ratio:.3f} of the MACs in "
              f"{report.iterative['steps']} rounds, criterion {report.criterion})\n"
              f"  top-1: unpruned {f['teacher_top1']:.2f}%  after each round {trail}")
    else:
        print(f"{report.source.model} -> {result.onnx_path} ({report.achieved.ratio:.3f} of the MACs, "
              f"criterion {report.criterion})\n"
              f"  top-1: unpruned {f['teacher_top1']:.2f}%  pruned {f['pruned_top1']:.2f}%  "
              f"fine-tuned {f['finetuned_top1']:.2f}%  ({f['steps']} steps x {result.options.batch_size} x "
              f"{world_size} process(es))")


def _train_progress(console, images_per_step: int | None = None):
    """A bar over all optimiser steps: loss, steps done, steps per second (and images per second,
    given `images_per_step`: a run starved of data shows there), elapsed time, ETA."""
    # deferred: start-up, as in _run
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    class StepsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            text = f"{task.speed:.2f} steps/s" if task.speed else "- steps/s"
            if images_per_step and task.speed:
                text += f" ({task.speed * images_per_step:.0f} images/s)"
            return Text(text, style="progress.data.speed")

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


if __name__ == "__main__":
    sys.exit(main())

