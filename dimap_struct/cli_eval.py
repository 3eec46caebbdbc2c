"""`dimap-eval`: top-1 / top-5 of an ONNX file or a model name on MNIST or an image folder."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_common import Parser, add_common_flags, add_weight_flags, run_command

EPILOG = """\
examples:
  dimap-eval reference                              # the trained reference Swin, shared MNIST
  dimap-eval /tmp/r.onnx --data ../shared/data/mnist
  dimap-eval swin_t --checkpoint swin_tiny.pth --data /data/imagenet/val --split all

ONNX files take their preprocessing from the metadata dimap-compress writes. Splits: index % 5
== 4 is "eval" (MNIST: 2,000 digits), the rest "train"; "all" is everything.
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("dimap-eval", "Top-1 / top-5 accuracy of a model.", EPILOG)
    p.add_argument("model", help="an .onnx file (onnxruntime), a pruned checkpoint (--save-pt) or a model name "
                   "(reference, swin_t, timm names)")
    p.add_argument("--data", metavar="PATH",
                   help="MNIST directory (IDX files) or an ImageFolder (default: ../shared/data/mnist)")
    p.add_argument("--split", choices=("eval", "train", "all"), default="eval", help="default: eval")
    p.add_argument("--batch-size", type=int, default=128, metavar="N")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime / torch threads")
    add_weight_flags(p, title="weights (model names only)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_common_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("dimap-eval", args, _run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .data import MNIST_DEFAULT
    from .errors import UserError
    from .evaluate import accuracy, load_classifier

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--batch-size and --limit must be positive")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data = args.data or MNIST_DEFAULT
    if not Path(data).is_dir():  # fail before the (possibly slow) model load
        raise UserError(f"data directory not found: {data}")
    classifier = load_classifier(args.model, checkpoint=args.checkpoint, pretrained=not args.no_pretrained,
                                 seed=args.seed, threads=args.threads)
    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, disable=args.quiet, transient=True) as bar:
        task = bar.add_task("evaluating", total=None)
        result = accuracy(classifier, data, split=args.split, batch_size=args.batch_size, limit=args.limit,
                          on_batch=lambda done, total: bar.update(task, completed=done, total=total))
    result.update(model=classifier.description, data=str(data))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{classifier.description}\n  data {data} (split {result['split']}, {result['images']} images)\n"
              f"  top-1 {result['top1']:.2f}%   top-5 {result['top5']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
