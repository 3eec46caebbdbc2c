"""`dimap-eval`: top-1 / top-5 of an ONNX file or a model name on MNIST or an image folder."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from ..options import EvalOptions
from .common import Parser, add_common_flags, add_config_flag, main_of

EPILOG = """\
examples:
  dimap-eval reference --data mnist/                # the trained reference Swin, MNIST's IDX files
  DIMAP_DATA=mnist/ dimap-eval /tmp/r.onnx
  dimap-eval swin_t --checkpoint swin_tiny.pth --data /data/imagenet/val --split all

ONNX files take their preprocessing from the metadata dimap-compress writes. Splits: index % 5
== 4 is "eval" (MNIST: 2,000 digits), the rest "train"; "all" is everything. Without --data
the directory in $DIMAP_DATA is read.
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("dimap-eval", "Top-1 / top-5 accuracy of a model.", EPILOG)
    EvalOptions.add_flags(p)
    add_config_flag(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_common_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return main_of("dimap-eval", build_parser, _run, argv)


def _run(args: argparse.Namespace) -> int:
    # deferred: start-up; --help and bad flags load none of these (torch, onnxruntime, rich)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ..data import default_data
    from ..data.timm_readers import reader_source
    from ..deploy.evaluate import accuracy, load_classifier
    from ..deploy.onnx_file import check_file

    options = EvalOptions.from_args(args, args.config)
    if options.model is None:
        raise UserError("give a MODEL: an .onnx file, a pruned checkpoint or a model name")
    if options.threads:
        import torch  # deferred: start-up, as above

        torch.set_num_threads(options.threads)
    if str(options.model).lower().endswith(".onnx"):  # a wrong MODEL is named before a missing data directory
        check_file(Path(options.model))
    data = default_data(options.data)
    if reader_source(data) is None and not Path(data).is_dir():  # fail before the (possibly slow) model load
        raise UserError(f"data directory not found: {data}")
    if options.runtime != "onnxruntime" and not str(options.model).lower().endswith(".onnx"):
        raise UserError(f"--runtime {options.runtime} runs .onnx files; {options.model} runs in PyTorch")
    classifier = load_classifier(options.model, checkpoint=options.checkpoint, pretrained=options.pretrained,
                                 seed=options.seed, threads=options.threads, runtime=options.runtime)
    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, disable=args.quiet, transient=True) as bar:
        task = bar.add_task("evaluating", total=None)
        result = accuracy(classifier, data, split=options.split, batch_size=options.batch_size, limit=options.limit,
                          on_batch=lambda done, total: bar.update(task, completed=done, total=total))
    result.update(model=classifier.description, data=str(data), recipe=options.recipe())
    for warning in result["warnings"]:
        print(f"dimap-eval: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{classifier.description}\n  data {data} (split {result['split']}, {result['images']} images)\n"
              f"  top-1 {result['top1']:.2f}%   top-5 {result['top5']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
