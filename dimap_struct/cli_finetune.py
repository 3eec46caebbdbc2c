"""`dimap-finetune`: prune like dimap-compress, recover accuracy with distillation, export ONNX.

    dimap-finetune reference --flops 0.5 -o r_ft.onnx
    torchrun --nproc_per_node 2 -m dimap_struct.cli_finetune reference --flops 0.5 -o r_ft.onnx

Under torchrun every process prunes the same way, trains on its shard with DDP, and rank 0
writes the outputs. After each full epoch rank 0 saves OUT.resume.pt; `--resume` continues from
it after an interruption. The ONNX / JSON outputs appear only when everything succeeded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_common import Parser, add_common_flags, add_weight_flags, progress, run_command


def build_parser() -> argparse.ArgumentParser:
    p = Parser("dimap-finetune", "Prune a Swin to a MACs budget, fine-tune it with knowledge distillation "
               "from the unpruned model plus the labels, export ONNX.", __doc__.split("\n\n")[1])
    p.add_argument("model", help="model name (reference, swin_t, timm names)")
    p.add_argument("--flops", default="0.5", metavar="R", help="MACs to keep (default: 0.5)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="fine-tuned ONNX (+ OUT.json)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--criterion", default="dimap", metavar="NAME", help="pruning criterion (default: dimap)")
    p.add_argument("--calib-data", metavar="PATH", help="calibration data for --criterion taylor")
    add_weight_flags(p, "seed of pruning choices, data order and init (default: 0)")
    t = p.add_argument_group("training")
    t.add_argument("--data", metavar="PATH", help="MNIST directory or ImageFolder (default: ../shared/data/mnist); "
                   "trains on its 'train' split, reports top-1 on 'eval'")
    t.add_argument("--epochs", type=float, default=1.0, help="default: 1 (fractions allowed)")
    t.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps")
    t.add_argument("--batch-size", type=int, default=64, metavar="N", help="per process (default: 64)")
    t.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: 5e-4)")
    t.add_argument("--alpha", type=float, default=0.7, help="weight of the distillation term (default: 0.7)")
    t.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (default: 2)")
    t.add_argument("--resume", action="store_true", help="continue from OUT.resume.pt (saved after each epoch)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("dimap-finetune", args, _run)


def resume_path(output: str) -> Path:
    return Path(output).with_suffix(".resume.pt")


def _run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from .budget import check_fraction
    from .data import MNIST_DEFAULT
    from .errors import UserError
    from .evaluate import accuracy, torch_classifier
    from .finetune import FinetuneConfig, finetune, init_distributed, save_state, weights_digest
    from .pipeline import check_output, compress, load_any, write_outputs

    check_fraction(args.flops)
    if args.epochs <= 0 or args.batch_size < 1 or (args.max_steps is not None and args.max_steps < 1):
        raise UserError("--epochs, --batch-size and --max-steps must be positive")
    paths = check_output(args.output, args.force)
    data = args.data or MNIST_DEFAULT
    ctx = init_distributed()
    console = Console(stderr=True)
    step = progress(console) if ctx.is_main and not args.quiet else None
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, alpha=args.alpha,
                         temperature=args.temperature, max_steps=args.max_steps, seed=args.seed)
    identity = {"model": args.model, "flops": str(args.flops), "criterion": args.criterion, "seed": args.seed,
                "checkpoint": args.checkpoint, "world_size": ctx.world_size, "config": cfg.__dict__}
    state = None
    resume = resume_path(args.output)
    if args.resume:
        if not resume.is_file():
            raise UserError(f"--resume: no {resume} to continue from")
        state = torch.load(resume, map_location="cpu", weights_only=False)
        if state["meta"] != identity:
            raise UserError(f"--resume: {resume} was saved by a different command (model, target, criterion, "
                            "seed, process count or training options differ)")

    loaded = load_any(args.model, checkpoint=args.checkpoint, pretrained=not args.no_pretrained, seed=args.seed)
    result = compress(loaded, args.flops, criterion=args.criterion, calib_data=args.calib_data, seed=args.seed,
                      on_step=step)
    student, teacher, config = result.model, loaded.model, loaded.data_config
    report = result.report

    def evaluate(model):
        return accuracy(torch_classifier(model, config, ""), data, split="eval")["top1"]

    before = {}
    if ctx.is_main:
        before = {"teacher_top1": evaluate(teacher), "pruned_top1": evaluate(student)}

    def save(epoch: int, st: dict) -> None:
        if ctx.is_main:
            save_state(resume, st, identity)

    on_step = None
    if ctx.is_main and not args.quiet:
        on_step = _train_progress(console)
    try:
        summary = finetune(student, teacher, data, config, cfg, ctx, state=state, on_epoch_end=save, on_step=on_step)
    except KeyboardInterrupt:
        if resume.is_file():
            print(f"dimap-finetune: interrupted; rerun with --resume to continue from {resume}", file=sys.stderr)
        raise
    digest = weights_digest(student)
    print(f"rank {ctx.rank}: weights sha256 {digest}", file=sys.stderr, flush=True)
    if ctx.is_main:
        after = evaluate(student)
        report["finetune"] = {**summary, **before, "finetuned_top1": after, "data": str(data),
                              "weights_sha256": digest, "resumed": state is not None}
        write_outputs(student, report, paths, tuple(config["input_size"]), 17, report.get("timings_s", {}))
        resume.unlink(missing_ok=True)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            f = report["finetune"]
            print(f"{report['source_model']} -> {paths[0]} ({report['achieved']['ratio']:.3f} of the MACs, "
                  f"criterion {report['criterion']})\n"
                  f"  top-1: unpruned {f['teacher_top1']:.2f}%  pruned {f['pruned_top1']:.2f}%  "
                  f"fine-tuned {f['finetuned_top1']:.2f}%  ({f['steps']} steps x {cfg.batch_size} x "
                  f"{ctx.world_size} process(es))")
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def _train_progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=console, transient=True)
    task = None

    def update(step: int, total: int, loss: float) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("fine-tuning", total=total)
        bar.update(task, completed=step, description=f"fine-tuning (loss {loss:.3f})")
        if step >= total:
            bar.stop()

    return update


if __name__ == "__main__":
    sys.exit(main())
