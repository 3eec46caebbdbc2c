"""Output files: checked before the work, written under short temporary names, published
together or not at all, and never over an existing file unless `force`.

- `check_input` and `check_output` are the one rule for paths, applied to every path a command
  reads or writes before any work: a whole path within PATH_MAX and names within NAME_MAX; an
  input must be a regular file (a directory, FIFO or device is named as such) that is not
  empty; an output needs the right extension, a writable directory, no file of that name unless
  `force`, and may not be one of the command's inputs (same file, through any link).
- `staged(paths, force)` yields one temporary file per output, beside it; when the block ends
  normally they are all published (`publish`), otherwise removed.
- `publish` is the final step and checks again: without `force` it links each file to its
  name, which fails if the name appeared meanwhile (another run writing the same output), so
  an existing file is never replaced. Several outputs are published together: if one fails,
  those already published are removed.
- Every temporary file is registered until it is published or removed, so the command's exit
  path (`cli.common.run_command`) removes whatever an interruption left (`remove_pending`).
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from . import signals
from .errors import UserError

TEMP_PREFIX = ".dimap-"
"""Temporary files are `.dimap-XXXXXXXX<suffix>`: short, whatever the output's name."""

# errors writing a file that the user can fix: space, quota, file size limit, read-only mount
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_pending: set[Path] = set()
published: list[Path] = []
"""Outputs this process has published, in order (for the message after an interruption)."""


def check_input(path: str | os.PathLike, what: str = "input", *, directory: bool = False) -> Path:
    """`path` as a Path, or UserError (one line) unless it names an existing regular file that
    is not empty (or, with `directory`, a directory); a FIFO, device or socket is refused by
    name, before anything opens it (opening a FIFO blocks)."""
    path = check_path_length(path, what)
    try:
        info = path.stat()
    except FileNotFoundError:
        _missing_parent(path, what)
        raise UserError(f"{what} not found: {_short(path)}") from None
    except NotADirectoryError:
        _missing_parent(path, what)
        raise UserError(f"{what} not found: {_short(path)}") from None
    except OSError as err:
        raise UserError(f"{what} {_short(path)} cannot be read ({err.strerror})") from None
    kind = _kind(info.st_mode)
    if directory:
        if kind != "directory":
            raise UserError(f"{what} {_short(path)} is {_article(kind)}, not a directory")
        return path
    if kind != "file":
        raise UserError(f"{what} {_short(path)} is {_article(kind)}, not a regular file")
    if info.st_size == 0:
        raise UserError(f"{what} {_short(path)} is an empty file (0 bytes)")
    return path


def check_output(path: str | os.PathLike, force: bool, suffixes: tuple[str, ...] | None = None,
                 what: str = "output", inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """`path` as a Path, or UserError (one line) unless it can be written: the right suffix
    (when `suffixes` are given), a name the file system allows, an existing writable directory,
    not a directory itself, not one of `inputs` (the same file under any name or link), and no
    file there unless `force`. `what` names it in messages (e.g. 'output', '--plot')."""
    path = check_path_length(path, what)
    if suffixes and path.name.lower() in suffixes:
        raise UserError(f"{what} name {path.name} is only an extension; give a name such as model{path.name}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {_short(path)} must end in {' or '.join(suffixes)}")
    parent = path.parent
    _check_directory(parent, what)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise UserError(f"{what} {_short(path)} is also an input of this command; write it elsewhere")
    if (path.exists() or path.is_symlink()) and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite")
    _probe_writable(parent, what)
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name one file (same inode through any link, or the same resolved path
    when one does not exist yet)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return Path(a).resolve() == Path(b).resolve()
        except (OSError, RuntimeError):  # a link loop: not a file that can be an input
            return False


def check_path_length(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path, or UserError if it is empty or longer than the system allows, as a
    whole (PATH_MAX) or in one of its names (NAME_MAX)."""
    text = os.fspath(path)
    if not text:
        raise UserError(f"{what} name is empty")
    path = Path(text)
    size = len(os.fsencode(os.path.abspath(text)))
    limit = _limit("PC_PATH_MAX", 4096)
    if size >= limit:
        raise UserError(f"{what} path is {size} bytes long; the system allows {limit - 1}: {_short(path)}")
    name_max = _limit("PC_NAME_MAX", 255)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise UserError(f"{what} file name is {len(os.fsencode(part))} bytes long; the file system allows "
                            f"{name_max}: {_short(path)}")
    return path


def _limit(name: str, fallback: int) -> int:
    try:
        return os.pathconf("/", name)
    except (OSError, ValueError):
        return fallback


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _article(kind: str) -> str:
    return f"a {kind}"


def _missing_parent(path: Path, what: str) -> None:
    """UserError when a component of `path` is a file, not a directory (e.g. /etc/passwd/x.pt)."""
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"{what} {_short(path)} cannot exist: {existing} is a file, not a directory")


def _check_directory(parent: Path, what: str) -> None:
    if parent.is_dir():
        return
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"{what} directory {parent} cannot exist: {existing} is a file, not a directory")
    raise UserError(f"{what} directory {parent} does not exist")


def _probe_writable(parent: Path, what: str) -> None:
    # os.access says yes to root everywhere, /proc and read-only mounts included: create a file
    with signals.deferred():
        try:
            fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
        except OSError as err:
            raise UserError(f"{what} directory {parent} is not writable ({err.strerror})") from None
        os.close(fd)
        os.unlink(probe)


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 80 else f"{text[:38]}...{text[-38:]}"


@contextmanager
def staged(paths: Sequence[str | os.PathLike], force: bool) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of `paths`; publish them all when the block ends
    normally (see `publish`), remove them on any exception, Ctrl-C or termination signal.
    An OSError from a full disk, a quota or a read-only file system becomes a UserError
    naming the output."""
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for final in finals:
            temps.append(_new_temp(final))
        try:
            yield temps
        except OSError as err:
            if err.errno not in _WRITE_ERRORS:
                raise
            raise _write_error(err, finals, temps) from err
        publish(list(zip(temps, finals)), force)
    finally:
        for temp in temps:
            _discard(temp)


@contextmanager
def atomic_output(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """`staged` for one file: yield its temporary path. `force=True` (the default) replaces an
    existing file, for files the command owns (a resume checkpoint)."""
    with staged([path], force) as (temp,):
        yield temp


def publish(pairs: Sequence[tuple[Path, Path]], force: bool) -> None:
    """Move each temporary file to its final name, all or none. Without `force` a name that
    exists by now is never replaced (UserError); with it, existing files are moved aside and
    removed only once every file is in place (restored if one fails); a directory is never
    replaced. Termination signals wait until this is done."""
    done: list[Path] = []
    aside: list[tuple[Path, Path]] = []  # with force: (old file moved aside, its name)
    with signals.deferred(), _locked({final.parent for _, final in pairs}):
        try:
            for temp, final in pairs:
                os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give ordinary permissions
                # a link is replaced itself (its target is left alone), like `ln -sf` / `mv -f`
                if force and (final.is_symlink() or final.is_file()):
                    old = _new_temp(final)
                    os.replace(final, old)  # kept until the whole set is published
                    aside.append((old, final))
                _link_new(temp, final)
                _pending.discard(temp)
                done.append(final)
            published.extend(p for p in done if p not in published)
        except BaseException as err:
            for final in done:
                final.unlink(missing_ok=True)
            for old, final in aside:  # --force: the earlier outputs come back as they were
                os.replace(old, final)
                _pending.discard(old)
            if isinstance(err, OSError):  # the checks before the work passed: the file system changed
                raise _write_error(err, [f for _, f in pairs], [t for t, _ in pairs]) from err
            raise
        for old, _ in aside:
            _discard(old)


@contextmanager
def _locked(directories) -> Iterator[None]:
    """Hold an exclusive lock on each directory while a set of outputs is published, so that
    concurrent runs writing the same names (with --force) publish one whole set after the other,
    never a mix. flock on the directory itself leaves no lock file behind; where the file system
    cannot lock, publishing goes on unlocked."""
    import fcntl  # here, not at the top: fcntl is POSIX-only, and the rest of this module is not

    handles = []
    try:
        for directory in sorted(str(d) for d in directories):
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            handles.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass
        yield
    finally:
        for fd in handles:
            os.close(fd)  # closing releases the lock


def _link_new(temp: Path, final: Path) -> None:
    """Give `temp` the name `final` only if no such name exists, atomically (a hard link
    fails on an existing name, where a rename would replace it). With --force the old file
    was moved aside first, so this is the one path for both."""
    if final.is_dir():
        raise UserError(f"{final} is a directory")
    try:
        try:
            os.link(temp, final)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            # no hard links on this file system: reserve the name exclusively, then fill it
            os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.replace(temp, final)
            return
    except FileExistsError:
        raise UserError(f"{final} appeared while this command ran; it was kept (pass --force to "
                        "overwrite)") from None
    os.unlink(temp)


def _new_temp(final: Path) -> Path:
    with signals.deferred():  # never a file on disk that the registry does not know
        try:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=final.suffix, dir=final.parent)
        except OSError as err:
            raise _write_error(err, [final], []) from err
        os.close(fd)
        temp = Path(name)
        _pending.add(temp)
    return temp


def _discard(temp: Path) -> None:
    with signals.deferred():
        try:
            temp.unlink()
        except OSError:  # gone already, or the directory changed: nothing more to do here
            pass
        _pending.discard(temp)


def remove_pending() -> list[Path]:
    """Remove every temporary file this process still holds (after an interruption); return
    their paths."""
    removed = sorted(_pending)
    for temp in removed:
        _discard(temp)
    return removed


def _write_error(err: OSError, finals: Sequence[Path], temps: Sequence[Path]) -> UserError:
    """One line naming the output `err` happened to (the first one if it cannot tell)."""
    target = finals[0]
    for temp, final in zip(temps, finals):
        if err.filename and Path(err.filename) in (temp, final):
            target = final
    return UserError(f"cannot write {target}: {err.strerror or os.strerror(err.errno)}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
