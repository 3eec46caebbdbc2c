"""`dimap-compress`: prune a Swin's heads and MLP channels to a MACs budget, export dense ONNX.

User errors print one line and exit with code 2 (a traceback only with --debug); Ctrl-C exits
with 130. Output files are written atomically: nothing half-written is ever left behind.
"""
from __future__ import annotations

import argparse
import json
import sys

from .cli_common import Parser, add_common_flags, add_weight_flags, progress, run_command

CRITERION_NAMES = ("dimap", "l1", "l2", "magnitude-global", "lamp-global", "random", "taylor", "dimap-cost")
"""Kept in step with criteria.CRITERIA by a test; listed here so --help needs no torch import."""
STRUCTURED_ONLY = ("criterion", "score_mode", "min_heads", "min_mlp", "round_to", "compare", "calib_data",
                   "prune_embed", "min_embed", "save_pt")

EPILOG = """\
examples:
  dimap-compress swin_b --flops 0.5 -o swin_b_small.onnx
  dimap-compress swin_base_patch4_window7_224.ms_in22k_ft_in1k --flops 7.3G -o swin_b_7g.onnx
  dimap-compress swin_t --checkpoint swin_tiny_patch4_window7_224.pth --flops 0.6 -o t.onnx
  dimap-compress swin_t --no-pretrained --flops 0.5 --json

MACs are multiply-accumulates (what the DIMAP paper calls FLOPs). Pretrained weights come
through timm / the Hugging Face Hub; set HF_HUB_OFFLINE=1 to use only its local cache.
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("dimap-compress", "Remove attention heads and MLP channels of a Swin Transformer, ranked by "
               "data-free DIMAP scores, until its MACs meet a budget; export a dense ONNX model with a "
               "MACs / params report (JSON beside it).", EPILOG)
    p.add_argument("model", nargs="?", help="timm model name, optionally with a pretrained tag "
                   "(swin_base_patch4_window7_224.ms_in22k_ft_in1k), an alias (swin_t, swin_s, swin_b, swin_l), "
                   "'torchvision:swin_t', 'reference', or a pruned checkpoint written by --save-pt")
    p.add_argument("--flops", metavar="R",
                   help="MACs to keep: a fraction 0 < R <= 1 of the original, or an absolute budget "
                        "such as 7.3G (default: 0.5)")
    p.add_argument("-o", "--output", metavar="OUT.onnx",
                   help="write the pruned model as ONNX here, and the report as OUT.json beside it")
    p.add_argument("--force", action="store_true", help="overwrite OUT.onnx / OUT.json if present")
    p.add_argument("--save-pt", metavar="OUT.pt",
                   help="also save the pruned PyTorch model (safetensors + architecture spec, no pickle); "
                        "dimap_struct.load_pruned(OUT.pt) rebuilds it")
    p.add_argument("--from-pt", metavar="PRUNED.pt", help="start from a pruned checkpoint instead of MODEL")

    add_weight_flags(p, "seed of the random initialisation and of --criterion random (default: 0)")

    s = p.add_argument_group("selection")
    s.add_argument("--criterion", metavar="NAME",
                   help="group importance (default: dimap): " + ", ".join(CRITERION_NAMES))
    s.add_argument("--calib-data", metavar="PATH",
                   help="data for data-driven criteria (taylor): an MNIST directory or an ImageFolder")
    s.add_argument("--calib-batches", type=int, default=4, metavar="N",
                   help="calibration batches of 32 images for taylor (default: 4)")
    s.add_argument("--score", choices=("group", "weight"), dest="score_mode",
                   help="DIMAP group score: group = per-group energies (option A, default); "
                        "weight = mean of the paper's per-weight scores over the group (option B)")
    s.add_argument("--min-heads", type=int, metavar="N", help="heads every block keeps (default: 1)")
    s.add_argument("--min-mlp", type=int, metavar="N", help="MLP channels every block keeps (default: 8)")
    s.add_argument("--round-to", type=int, metavar="N",
                   help="round kept MLP widths, residual widths and heads' total width to multiples of N "
                        "(e.g. 8 or 16 for faster kernels; default: 1)")
    s.add_argument("--prune-embed", action="store_true", default=None,
                   help="also remove residual (embedding) channels of every stage: a narrower, faster model")
    s.add_argument("--min-embed", type=int, metavar="N", help="residual channels every stage keeps (default: 16)")
    s.add_argument("--granularity", choices=("structured", "weight"), default="structured",
                   help="structured (default): remove heads and MLP channels, the model gets faster; "
                        "weight: the paper's setting, zero single weights (one threshold per module), not faster")
    s.add_argument("--params", metavar="R",
                   help="with --granularity weight: keep the fraction R of the prunable weights (instead of --flops)")

    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of tables")
    o.add_argument("--blocks", action="store_true", help="also print the per-block table (always in the JSON)")
    o.add_argument("--plot", metavar="OUT.png", help="draw kept heads and MLP width per block (matplotlib)")
    o.add_argument("--compare", metavar="C1,C2",
                   help="with --plot: also draw these criteria at the same target (not exported)")
    add_common_flags(o)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("dimap-compress", args, _run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .budget import check_fraction
    from .criteria import get_criterion
    from .errors import UserError
    from .files import check_new_file
    from .pipeline import check_output, compress, load_any

    # cheap checks first, so bad input fails in well under a second
    if (args.model is None) == (args.from_pt is None):
        raise UserError("give a MODEL or --from-pt PRUNED.pt (exactly one)")
    if args.from_pt is not None:
        from .checkpoint import read_spec

        read_spec(args.from_pt)  # one clear line if it is not a pruned checkpoint
        args.model = args.from_pt
    weight = args.granularity == "weight"
    if weight:
        given = [f"--{k.replace('_', '-')}" for k in STRUCTURED_ONLY if getattr(args, k) is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply to structured pruning, not to --granularity weight")
        if args.flops is not None and args.params is not None:
            raise UserError("give either --flops or --params, not both")
        if args.flops is None and args.params is None:
            args.params = "0.5"
    elif args.params is not None:
        raise UserError("--params is a target of --granularity weight; structured pruning takes --flops")
    if args.flops is not None:
        check_fraction(args.flops)
    criterion = args.criterion or "dimap"
    compare = [c.strip() for c in args.compare.split(",") if c.strip()] if args.compare else []
    for name in [criterion] + compare:
        get_criterion(name)
    if compare and not args.plot:
        raise UserError("--compare only draws into --plot OUT.png")
    if args.calib_data is not None and not get_criterion(criterion).needs_data and \
            not any(get_criterion(c).needs_data for c in compare):
        raise UserError(f"--calib-data is only used by data-driven criteria (taylor), not by '{criterion}'")
    if args.output:
        check_output(args.output, args.force)
    if args.plot:
        check_new_file(args.plot, args.force, (".png",), "--plot")

    err_console = Console(stderr=True)
    on_step = None if args.quiet else progress(err_console)
    # --compare prunes one loaded model several times (compress copies it each time); otherwise
    # compress loads it itself, with progress, and no second copy is made
    source = load_any(args.model, checkpoint=args.checkpoint, pretrained=not args.no_pretrained,
                      seed=args.seed) if compare else args.model
    options = dict(
        flops=args.flops, output=args.output, force=args.force, checkpoint=args.checkpoint,
        pretrained=not args.no_pretrained, seed=args.seed, on_step=on_step, granularity=args.granularity,
        params=args.params)
    if args.save_pt is not None:
        options["save_pt"] = args.save_pt
    if not weight:
        options.update(
            criterion=criterion, score_mode=args.score_mode or "group", min_heads=_or(args.min_heads, 1),
            min_mlp=_or(args.min_mlp, 8), round_to=_or(args.round_to, 1), calib_data=args.calib_data,
            prune_embed=bool(args.prune_embed), min_embed=_or(args.min_embed, 16),
            calib_batches=args.calib_batches)
    result = compress(source, **options)
    if args.plot:
        _plot(args, source, options, result.report, compare)
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        from .report import print_report

        print_report(result.report, Console(), blocks=args.blocks)
    return 0


def _or(value, default):
    return default if value is None else value


def _plot(args, source, options, report: dict, compare: list[str]) -> None:
    """Draw this run and, for --compare, the same target under other criteria (no export)."""
    from pathlib import Path

    from .files import atomic_output
    from .pipeline import compress

    reports = [report]
    for name in compare:
        others = dict(options, criterion=name, output=None, on_step=None)
        reports.append(compress(source, **others).report)
    from .plot import plot_blocks

    path = Path(args.plot)
    with atomic_output(path, ".png") as tmp:
        plot_blocks(reports, tmp)
    report["plot"] = str(path)


if __name__ == "__main__":
    sys.exit(main())
