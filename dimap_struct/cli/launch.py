"""The console scripts' entry points. They import the command's module themselves, so that
Ctrl-C while Python loads it ends with one line, not a traceback (the module's own `main`
covers everything after that)."""
from __future__ import annotations

import sys
from importlib import import_module


def _launch(prog: str, module: str) -> int:
    try:
        main = import_module(f"dimap_struct.cli.{module}").main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output written", file=sys.stderr)
        return 130
    return main()


def compress() -> int:
    return _launch("dimap-compress", "compress")


def evaluate() -> int:
    return _launch("dimap-eval", "eval")


def finetune() -> int:
    return _launch("dimap-finetune", "finetune")


def bench() -> int:
    return _launch("dimap-bench", "bench")
