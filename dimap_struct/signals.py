"""Termination signals as exceptions, so that every command cleans up the same way.

SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, Docker, Slurm) and SIGHUP (a closed terminal)
raise `Terminated` in the main thread. It is a KeyboardInterrupt, so every `finally` and
`with` block on the way out runs: temporary files are removed (`files`), a fine-tuning run
keeps its last complete epoch. The command then exits with 128 + the signal number (130, 143,
129).

`deferred()` holds a signal back while a few steps must happen together (publishing the ONNX
file and its report, creating and registering a temporary file); it is raised when the block
ends. The flag lives in Python, not in the thread's signal mask, because the kernel may deliver
a signal to any of torch's threads.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """A termination signal arrived; `exit_code` is 128 + its number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


_depth = 0
_pending: int | None = None
_received: int | None = None
"""The signal raised as `Terminated` in the current `handled()` block: once set, the command is
unwinding."""


def _handle(signum, frame) -> None:
    global _pending, _received
    if _received is not None:  # already unwinding: more signals (Ctrl-C pressed again) must not cut the cleanup
        return
    if _depth:
        _pending = _pending or signum
        return
    _received = signum
    raise Terminated(signum)


def received() -> int | None:
    """The signal raised as `Terminated` in the current `handled()` block, if any: a library
    that was running when it arrived may have turned it into another exception."""
    return _received


@contextmanager
def handled():
    """Within the block, SIGINT, SIGTERM and SIGHUP raise `Terminated` (main thread only;
    elsewhere nothing changes). A signal the parent process told us to ignore (e.g. SIGHUP
    under `nohup`) stays ignored. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _pending, _received
    _pending, _received = None, None
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    try:  # a signal may land between two of these calls: the handlers put in place come off again
        for signum, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(signum, _handle)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def deferred():
    """Hold termination signals until the block ends, then raise the first one that arrived."""
    global _depth, _pending, _received
    _depth += 1
    try:
        yield
    finally:
        signum = _pending if _depth == 1 else None
        if signum is not None:
            _pending = None
        _depth -= 1
        if signum is not None:
            _received = signum
            raise Terminated(signum)
