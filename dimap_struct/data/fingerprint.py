"""A data directory's fingerprint, recorded in reports beside the calibration data's path."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def data_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a data directory's file list and sizes (of the file, for a file). Folders that
    cannot be listed and entries that cannot be examined are skipped; paths are '/'-separated,
    in pathlib's order, part by part (the hash is the same as before on POSIX systems)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(f"{path.name}\0{path.stat().st_size}\n".encode())
        return digest.hexdigest()
    # os.scandir on plain strings: pathlib's rglob + stat took 1.6 s on CIFAR-10's 60,000 files
    files = []
    folders = [""]
    while folders:
        relative = folders.pop()
        try:
            entries = list(os.scandir(os.path.join(path, relative)))
        except OSError:  # unreadable (lost+found), or gone
            continue
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(name)
                elif entry.is_file():
                    files.append((name.split("/"), entry.stat().st_size))
            except OSError:  # a symlink loop, a file removed meanwhile
                continue
    for parts, size in sorted(files):
        digest.update(f"{'/'.join(parts)}\0{size}\n".encode())
    return digest.hexdigest()
