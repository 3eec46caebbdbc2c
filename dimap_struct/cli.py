"""`dimap-compress`: prune a Swin's heads and MLP channels to a MACs budget, export dense ONNX.

User errors print one line and exit with code 2 (a traceback only with --debug); Ctrl-C exits
with 130. Output files are written atomically: nothing half-written is ever left behind.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

from . import __version__

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
    p = argparse.ArgumentParser(
        prog="dimap-compress",
        description="Remove attention heads and MLP channels of a Swin Transformer, ranked by "
                    "data-free DIMAP scores, until its MACs meet a budget; export a dense ONNX "
                    "model with a MACs / params report (JSON beside it).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="timm model name, optionally with a pretrained tag "
                   "(swin_base_patch4_window7_224.ms_in22k_ft_in1k), or an alias: swin_t, swin_s, swin_b, swin_l")
    p.add_argument("--flops", default="0.5", metavar="R",
                   help="MACs to keep: a fraction 0 < R <= 1 of the original, or an absolute budget "
                        "such as 7.3G (default: 0.5)")
    p.add_argument("-o", "--output", metavar="OUT.onnx",
                   help="write the pruned model as ONNX here, and the report as OUT.json beside it")
    p.add_argument("--force", action="store_true", help="overwrite OUT.onnx / OUT.json if present")

    w = p.add_argument_group("weights")
    src = w.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH",
                     help="local .pth / .pt / .safetensors state dict (bare, or under 'model' / 'state_dict')")
    src.add_argument("--no-pretrained", action="store_true",
                     help="random initialisation instead of pretrained weights (for trying the tool)")
    w.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default: 0)")

    s = p.add_argument_group("selection")
    s.add_argument("--score", choices=("group", "weight"), default="group", dest="score_mode",
                   help="group: DIMAP on per-group energies (option A, default); "
                        "weight: mean of the paper's per-weight scores over the group (option B)")
    s.add_argument("--min-heads", type=int, default=1, metavar="N", help="heads every block keeps (default: 1)")
    s.add_argument("--min-mlp", type=int, default=8, metavar="N",
                   help="MLP channels every block keeps (default: 8)")
    s.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="round kept MLP widths to multiples of N (e.g. 8 or 16 for faster kernels; default: 1)")

    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of tables")
    o.add_argument("--blocks", action="store_true", help="also print the per-block table (always in the JSON)")
    o.add_argument("--quiet", action="store_true", help="no progress on stderr")
    o.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("dimap-compress: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as err:
        from .errors import UserError

        if args.debug:
            raise
        if isinstance(err, UserError):
            print(f"dimap-compress: error: {err}", file=sys.stderr)
            return 2
        print(f"dimap-compress: internal error: {type(err).__name__}: {err} (rerun with --debug "
              "for the traceback)", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .budget import check_fraction
    from .pipeline import check_output, compress

    # cheap checks first, so bad input fails in well under a second
    check_fraction(args.flops)
    if args.output:
        check_output(args.output, args.force)

    err_console = Console(stderr=True)
    result = compress(
        args.model, args.flops, output=args.output, force=args.force, checkpoint=args.checkpoint,
        pretrained=not args.no_pretrained, seed=args.seed, score_mode=args.score_mode,
        min_heads=args.min_heads, min_mlp=args.min_mlp, round_to=args.round_to,
        on_step=None if args.quiet else _progress(err_console))
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        from .report import print_report

        print_report(result.report, Console(), blocks=args.blocks)
    return 0


def _progress(console):
    """One spinner per stage on stderr; a tick with the elapsed time when it ends."""
    import time

    @contextmanager
    def step(label: str):
        start = time.perf_counter()
        with console.status(f"{label}..."):
            yield
        console.print(f"[green]done[/] {label} [dim]({time.perf_counter() - start:.1f} s)[/]", highlight=False)

    return step


if __name__ == "__main__":
    sys.exit(main())
