"""Output files that never appear half-written, and the checks run on them before any work."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def check_new_file(path: str | os.PathLike, force: bool, suffixes: tuple[str, ...] | None = None,
                   what: str = "output") -> Path:
    """UserError unless `path` can be written: right suffix (when `suffixes` are given), an
    existing writable directory, and no file there unless `force`. `what` names it in messages
    (e.g. 'output', '--plot')."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {path} must end in {' or '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{what} directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} directory {parent} is not writable")
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite")
    return path


@contextmanager
def atomic_output(path: Path, suffix: str):
    """Yield a temporary path beside `path`; move it to `path` only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
