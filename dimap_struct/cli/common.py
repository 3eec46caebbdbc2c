"""What every `dimap-*` command shares: error handling, exit codes and progress display.

User errors (`UserError`) print one line and exit with code 2; Ctrl-C exits with 130, SIGTERM
with 143, SIGHUP with 129, after removing every temporary file; any other exception exits with 1
and a one-line hint. `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from .. import __version__
from ..errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line, exit code 2 (argparse itself prints
    the whole usage block first).

    It also keeps `arguments`: every `add_argument` call made on it or on its argument groups, in
    order, as `Argument(group, names, kwargs)`: what `cli.reference` renders docs/cli.md from."""

    def __init__(self, prog: str, description: str, epilog: str | None = None):
        self.arguments: list[Argument] = []
        super().__init__(prog=prog, description=description, epilog=epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        self.arguments.append(Argument("options", names, kwargs))
        return action

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        add, title = group.add_argument, group.title

        def recorded(*names, **kw):
            action = add(*names, **kw)
            self.arguments.append(Argument(title, names, kw))
            return action

        group.add_argument = recorded
        return group

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Argument:
    """One `add_argument` call of a `Parser`: the group it went into, its names, its keywords."""

    group: str
    names: tuple[str, ...]
    kwargs: dict


def add_common_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--quiet, --debug and --version."""
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="RECIPE", help="read options from a recipe (.yaml, .yml or .json; a JSON "
                   "report written by this command works too); flags given here override it")


@contextmanager
def exit_on_interrupt(prog: str):
    """While the libraries load, Ctrl-C ends the process at once: one line, exit 130. Nothing has
    been written yet. A KeyboardInterrupt must not unwind through a library's import: numpy's
    half-initialised C module then refuses the second load that torch tries, with a traceback.
    Main thread only; a SIGINT the parent told us to ignore stays ignored."""
    def stop(signum, frame):
        os.write(2, f"{prog}: interrupted; no output written\n".encode())
        os._exit(130)

    previous = signal.getsignal(signal.SIGINT)
    installed = False
    if previous is not signal.SIG_IGN:
        try:
            signal.signal(signal.SIGINT, stop)
            installed = True
        except ValueError:  # not the main thread: signal.signal's documented refusal
            pass
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


def main_of(prog: str, build_parser: Callable[[], argparse.ArgumentParser],
            run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse `argv` with `build_parser()` and `run_command` it. Building the parser imports the
    libraries (the criteria's choices): Ctrl-C or a lack of memory while they load gives one
    line, not a traceback."""
    try:
        with exit_on_interrupt(prog):
            args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output written", file=sys.stderr)
        return 130
    except (ImportError, MemoryError, OSError) as err:
        if _out_of_memory(err):
            print(f"{prog}: error: out of memory while loading the libraries (torch, timm); raise the memory "
                  "limit (ulimit -v)", file=sys.stderr)
            return 2
        raise
    return run_command(prog, args, run)


def run_command(prog: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], int]) -> int:
    """Call `run(args)` and turn exceptions into the exit codes above. SIGINT, SIGTERM and SIGHUP
    unwind like Ctrl-C (`signals`) and exit with 128 + the signal number; every temporary file
    is gone by then (`files.remove_pending`). Progress goes to stderr only when it is a terminal
    (`args.quiet` is set otherwise); library warnings and progress bars reach it only with
    `--debug`."""
    # deferred: start-up; files and signals load tempfile and threading, which --help never needs
    from .. import files, signals

    if not sys.stderr.isatty():
        args.quiet = True
    files.published.clear()
    try:
        with signals.handled(), _library_output(args), _watched_stdout() as stdout:
            try:
                return _exit_code(prog, args, run, stdout)
            except KeyboardInterrupt as err:  # a signal held back while an error was reported
                with signals.deferred():
                    files.remove_pending()
                return getattr(err, "exit_code", 130)
    except KeyboardInterrupt as err:  # it arrived while the handlers were being put in place or taken away
        with signals.deferred():
            files.remove_pending()
        return getattr(err, "exit_code", 130)


@contextmanager
def _library_output(args: argparse.Namespace):
    """Without --debug, Python warnings from libraries (torch, PIL, transformers) are dropped, and
    the Hugging Face libraries draw no progress bars when stderr is not a terminal."""
    if args.quiet and not args.debug:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    with warnings.catch_warnings():
        if not args.debug:
            warnings.simplefilter("ignore")
        yield


class _Stdout:
    """sys.stdout as it is, remembering the error of a failed write or flush: that error, and no
    other OSError, means the reader of the output went away or its disk is full."""

    def __init__(self, stream):
        self.stream, self.error = stream, None

    def write(self, text):
        try:
            return self.stream.write(text)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        try:
            return self.stream.flush()
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextmanager
def _watched_stdout():
    stream = sys.stdout
    sys.stdout = watched = _Stdout(stream)
    try:
        yield watched
    finally:
        sys.stdout = stream


def _exit_code(prog: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], int], stdout: _Stdout) -> int:
    from .. import signals  # deferred: start-up (see run_command)

    try:
        code = run(args)
        sys.stdout.flush()  # here, not at exit: a full or closed stdout is reported like any error
        return code
    except OSError as err:
        if err is not stdout.error:
            return _failed(prog, args, err)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        os.close(devnull)
        if err.errno == errno.EPIPE:  # e.g. piped into `head`: the reader left; like `cat`, say nothing
            return 128 + 13
        print(f"{prog}: error: cannot write standard output: {err.strerror}; the files written are complete",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        return _stopped(prog, err)
    except Exception as err:
        signum = signals.received()
        if signum is not None:  # the signal surfaced as another exception (e.g. inside an import)
            return _stopped(prog, signals.Terminated(signum))
        return _failed(prog, args, err)


def _failed(prog: str, args: argparse.Namespace, err: Exception) -> int:
    """Report `err` in one line (2 for a UserError or a lack of memory, else 1)."""
    from .. import files, signals  # deferred: start-up (see run_command)

    with signals.deferred():
        files.remove_pending()
        if args.debug:
            raise err
        if isinstance(err, UserError):  # ours are one line, but may quote what the user typed
            message = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err)).strip().replace("\n", "\\n")
            print(f"{prog}: error: {message}", file=sys.stderr)
            return 2
        if _out_of_memory(err):
            print(f"{prog}: error: out of memory{_while()}; free memory, or use a smaller model or batch",
                  file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(err).__name__}: {_one_line(str(err))} (rerun with --debug "
              "for the traceback)", file=sys.stderr)
        return 1


def _out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return any(sign in text for sign in ("can't allocate memory", "cannot allocate memory", "bad_alloc",
                                         "failed to map segment", "out of memory"))


def _while() -> str:
    """' while <stage>' for the pipeline stage that was running, if one was."""
    compression = sys.modules.get("dimap_struct.pipeline.compression")
    stage = getattr(compression, "current_stage", None) if compression is not None else None
    return f" while running '{stage}'" if stage else ""


def _stopped(prog: str, err: KeyboardInterrupt) -> int:
    """Clean up after Ctrl-C or a termination signal, say what was written, return the exit code."""
    from .. import files, signals  # deferred: start-up (see run_command)

    code = getattr(err, "exit_code", 130)
    with signals.deferred():
        files.remove_pending()
        what = "interrupted" if code == 130 else f"stopped by {err}"
        written = ", ".join(map(str, dict.fromkeys(files.published))) or "no output"
        print(f"{prog}: {what}; {written} written", file=sys.stderr)
    return code


def _one_line(text: str) -> str:
    """The first line of `text`, without terminal escapes (some libraries colour their errors)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).strip()
    return text.splitlines()[0] if text else ""


def progress(console):
    """One spinner per stage on stderr; a tick with the elapsed time when it ends."""

    @contextmanager
    def step(label: str):
        start = time.perf_counter()
        with console.status(f"{label}..."):
            yield
        console.print(f"[green]done[/] {label} [dim]({time.perf_counter() - start:.1f} s)[/]", highlight=False)

    return step
