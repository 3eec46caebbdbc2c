"""The console scripts' entry points. They import the command's module themselves, so that
Ctrl-C while Python loads it ends with one line, not a traceback (`common.exit_on_interrupt`;
the module's own `main` covers everything after that)."""
from __future__ import annotations

import resource
import sys
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

# The address space (ulimit -v) that the CUDA build of torch needs to load, in bytes. Measured on
# torch 2.14.1 (cu): `python -c "import torch, timm, onnxruntime"` loads at ulimit -v 3500000 KiB,
# raises MemoryError at 3200000, and at 3000000 a C++ static initialiser throws std::bad_alloc,
# which aborts the process (exit 134) before any Python handler can run. So the limit is checked
# before the import. The CPU-only build maps far less and is not checked.
CUDA_TORCH_ADDRESS_SPACE = 3_400_000 * 1024


def cuda_torch_installed() -> bool:
    """Whether the torch that would be imported is a CUDA build, found without importing it."""
    spec = find_spec("torch")
    roots = spec.submodule_search_locations if spec else None
    return bool(roots) and any((Path(root) / "lib" / "libtorch_cuda.so").exists() for root in roots)


def _address_space_too_small() -> int | None:
    """The soft RLIMIT_AS in bytes when it is below what this torch build needs to load, else None."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft >= CUDA_TORCH_ADDRESS_SPACE or not cuda_torch_installed():
        return None
    return soft


def _launch(prog: str, module: str) -> int:
    limit = _address_space_too_small()
    if limit is not None:
        print(f"{prog}: error: out of memory while loading the libraries: the address-space limit (ulimit -v) is "
              f"{limit / 2**30:.2f} GiB and this torch build needs about {CUDA_TORCH_ADDRESS_SPACE / 2**30:.1f} GiB; "
              "raise it", file=sys.stderr)
        return 2
    try:  # inside the try: a Ctrl-C before the handler is in place is caught below
        from .common import exit_on_interrupt

        with exit_on_interrupt(prog):
            main = import_module(f"dimap_struct.cli.{module}").main
    except KeyboardInterrupt:  # before the handler was in place
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
