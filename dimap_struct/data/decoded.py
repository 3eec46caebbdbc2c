"""An image folder decoded once into a uint8 array, cached in the user's cache directory.

For folders whose images all have one size (CIFAR-10: 60,000 32 x 32 JPEGs), decoding every
file on every epoch costs more than the model; here the folder is decoded once and kept as
`images` uint8 (N, H, W, C) and `labels` int64 (N,), in ImageFolder's order (classes sorted,
files sorted within a class). The cache file lives in `$DIMAP_CACHE` (default
`~/.cache/dimap_struct`), never in the data folder, and is keyed by the PIL mode and every
file's relative path and size: a changed folder gets a new entry.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

CACHE_ENV = "DIMAP_CACHE"


@dataclass
class DecodedFolder:
    images: np.ndarray
    """uint8 (N, H, W, C)."""
    labels: np.ndarray
    """int64 (N,)."""
    classes: list[str]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dimap_struct")


def decoded_folder(root: str | os.PathLike, mode: str = "RGB", *, progress: bool = False) -> DecodedFolder:
    """Every image of the ImageFolder `root` as one array (see the module docstring); UserError if
    the folder is empty, an image cannot be read, or the images differ in size."""
    from torchvision.datasets import ImageFolder

    from .datasets import read_image

    root = Path(root)
    folder = ImageFolder(str(root), allow_empty=True)
    if not folder.samples:
        raise UserError(f"image folder {root} has no images")
    listing = hashlib.sha256(mode.encode())
    for path, label in folder.samples:
        listing.update(f"{os.path.relpath(path, root)}\0{os.path.getsize(path)}\0{label}\n".encode())
    cached = cache_dir() / f"{listing.hexdigest()[:32]}.npz"
    if cached.is_file():
        with np.load(cached) as stored:
            return DecodedFolder(stored["images"], stored["labels"], list(folder.classes))
    samples = folder.samples
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, desc=f"decoding {root}", unit="img", leave=False)
    first = None
    images = None
    for i, (path, _) in enumerate(samples):
        array = np.asarray(read_image(path, mode))
        if first is None:
            first = array.shape
            images = np.empty((len(folder.samples), *array.shape[:2], array.shape[2] if array.ndim == 3 else 1),
                              np.uint8)
        if array.shape != first:
            raise UserError(f"{path} is {array.shape[1]}x{array.shape[0]}, other images in {root} are "
                            f"{first[1]}x{first[0]}: decoding to one array needs one size")
        images[i] = array.reshape(images.shape[1:])
    labels = np.asarray([label for _, label in folder.samples], np.int64)
    _store(cached, images, labels)
    return DecodedFolder(images, labels, list(folder.classes))


def _store(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from ..files import atomic_output

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, labels=labels)
    except (OSError, UserError):  # a cache that cannot be written only costs time next run
        pass
