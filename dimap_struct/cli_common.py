"""What every `dimap-*` command shares: error handling, exit codes and progress display.

User errors (`UserError`) print one line and exit with code 2; Ctrl-C exits with 130; any
other exception exits with 1 and a hint. `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from typing import Callable


def add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run_command(prog: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], int]) -> int:
    """Call `run(args)` and turn exceptions into the exit codes above."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as err:
        from .errors import UserError

        if args.debug:
            raise
        if isinstance(err, UserError):
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(err).__name__}: {err} (rerun with --debug "
              "for the traceback)", file=sys.stderr)
        return 1


def progress(console):
    """One spinner per stage on stderr; a tick with the elapsed time when it ends."""

    @contextmanager
    def step(label: str):
        start = time.perf_counter()
        with console.status(f"{label}..."):
            yield
        console.print(f"[green]done[/] {label} [dim]({time.perf_counter() - start:.1f} s)[/]", highlight=False)

    return step
