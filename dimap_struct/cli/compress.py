"""`dimap-compress`: prune a Swin's heads and MLP channels to a MACs budget, export dense ONNX.

Every option is declared once in `options.CompressOptions`; `--config RECIPE` reads them from
a recipe file (or the JSON report of an earlier run) and flags override it. User errors print
one line and exit with code 2 (a traceback only with --debug); Ctrl-C exits with 130. Output
files are written atomically: nothing half-written is ever left behind.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError
from ..options import CompressOptions
from .common import Parser, add_common_flags, add_config_flag, main_of, progress

EPILOG = """\
examples:
  dimap-compress swin_b --flops 0.5 -o swin_b_small.onnx
  dimap-compress swin_base_patch4_window7_224.ms_in22k_ft_in1k --flops 7.3G -o swin_b_7g.onnx
  dimap-compress swin_t --checkpoint swin_tiny_patch4_window7_224.pth --flops 0.6 -o t.onnx
  dimap-compress swin_t --no-pretrained --flops 0.5 --json
  dimap-compress --config swin_b_small.json -o again.onnx     # rerun the recipe of a report

MACs are multiply-accumulates (what the DIMAP paper calls FLOPs). Pretrained weights come
through timm / the Hugging Face Hub; set HF_HUB_OFFLINE=1 to use only its local cache.
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("dimap-compress", "Remove attention heads and MLP channels of a Swin Transformer, ranked by "
               "data-free DIMAP scores, until its MACs meet a budget; export a dense ONNX model with a "
               "MACs / params report (JSON beside it).", EPILOG)
    CompressOptions.add_flags(p)
    add_config_flag(p)
    p.add_argument("--from-pt", metavar="PRUNED.pt", help="start from a pruned checkpoint instead of MODEL")
    o = next(g for g in p._action_groups if g.title == "output")
    o.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of tables")
    o.add_argument("--blocks", action="store_true", help="also print the per-block table (always in the JSON)")
    o.add_argument("--plot", metavar="OUT.png", help="draw kept heads and MLP width per block (matplotlib)")
    o.add_argument("--compare", metavar="C1,C2",
                   help="with --plot: also draw these criteria at the same target (not exported)")
    add_common_flags(o)
    return p


def main(argv: list[str] | None = None) -> int:
    return main_of("dimap-compress", build_parser, _run, argv)


def parse_options(args: argparse.Namespace) -> CompressOptions:
    """The validated options of a command line (recipe first, then flags)."""
    if getattr(args, "from_pt", None) is not None:
        if getattr(args, "model", None) is not None:
            raise UserError("give a MODEL or --from-pt PRUNED.pt (exactly one)")
        if getattr(args, "checkpoint", None) is not None:
            raise UserError("--from-pt PRUNED.pt holds its own weights; --checkpoint does not apply to it")
        from ..models.checkpoint import read_spec  # deferred: start-up (models load torch and timm)

        read_spec(args.from_pt)  # one clear line if it is not a pruned checkpoint
        args.model = args.from_pt
    options = CompressOptions.from_args(args, args.config)
    if options.model is None:
        raise UserError("give a MODEL or --from-pt PRUNED.pt (exactly one)")
    return options


def _run(args: argparse.Namespace) -> int:
    # deferred: start-up; --help and bad flags load none of these (torch, timm, onnxruntime, rich)
    from rich.console import Console

    from ..files import check_output
    from ..pipeline import check_outputs, compress, input_files
    from ..prune.criteria import get_criterion
    from ..prune.replay import load_any
    from ..report.tables import print_report

    options = parse_options(args)  # cheap checks first, so bad input fails in well under a second
    compare = [c.strip() for c in args.compare.split(",") if c.strip()] if args.compare else []
    for name in compare:
        get_criterion(name)
    if compare and not args.plot:
        raise UserError("--compare only draws into --plot OUT.png")
    if compare and options.granularity == "weight":
        raise UserError("--compare only applies to structured pruning, not to --granularity weight")
    inputs = (args.config,) if args.config else ()
    check_outputs(options, inputs)
    if args.plot:
        check_output(args.plot, options.force, (".png",), "--plot", (*input_files(options), *inputs))

    on_step = None if args.quiet else progress(Console(stderr=True))
    # --compare prunes one loaded model several times (compress copies it each time); otherwise
    # compress loads it itself, with progress, and no second copy is made
    source = load_any(options.model, checkpoint=options.checkpoint, pretrained=options.pretrained,
                      seed=options.seed, model_kwargs=options.model_kwargs) if compare else options.model
    result = compress(source, options, on_step=on_step)
    if args.plot:
        _plot(args.plot, source, options, result.report, compare)
    if args.json:
        print(json.dumps(result.report.to_dict(), indent=2))
        for note in result.report.notes:  # the table prints its notes; JSON on stdout keeps stderr for these
            if note.startswith("warning:"):
                print(note, file=sys.stderr)
    else:
        print_report(result.report, Console(), blocks=args.blocks)
    return 0


def _plot(path: str, source, options: CompressOptions, report, compare: list[str]) -> None:
    """Draw this run and, for --compare, the same target under other criteria, each with its own
    policy (no export)."""
    # deferred: start-up, as in _run (and matplotlib, loaded only for --plot)
    from ..files import atomic_output
    from ..pipeline import compress
    from ..report.plot import plot_blocks

    reports = [report]
    for name in compare:
        reports.append(compress(source, options.replace(criterion=name, policy=None, output=None, save_pt=None)).report)
    with atomic_output(path, options.force) as tmp:
        plot_blocks(reports, tmp)
    report.plot = str(path)


if __name__ == "__main__":
    sys.exit(main())
