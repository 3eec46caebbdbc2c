"""An image folder decoded once into a uint8 array, cached in the user's cache directory.

For folders whose images all have one size (CIFAR-10: 60,000 32 x 32 JPEGs), decoding every
file on every epoch costs more than the model; here the folder is decoded once and kept as
`images` uint8 (N, H, W, C) and `labels` int64 (N,), in ImageFolder's order (classes sorted,
files sorted within a class). The cache file lives in `$DIMAP_CACHE` (default
`~/.cache/dimap_struct`), never in the data folder, and is keyed by the PIL mode and every
file's relative path and size: a changed folder gets a new entry. An entry also holds the key
it was made for and a SHA-256 of its arrays; one that fails any check (another folder's entry,
a truncated or damaged file, the wrong count, shape or labels) is decoded again and replaced.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_output
from .datasets import check_links, read_image

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
    root = Path(root)
    check_links(root)  # before torchvision's walk, which follows links into any loop
    folder = ImageFolder(str(root), allow_empty=True)
    if not folder.samples:
        raise UserError(f"image folder {root} has no images")
    listing = hashlib.sha256(mode.encode())
    for path, label in folder.samples:
        listing.update(f"{os.path.relpath(path, root)}\0{os.path.getsize(path)}\0{label}\n".encode())
    key = listing.hexdigest()
    labels = np.asarray([label for _, label in folder.samples], np.int64)
    cached = cache_dir() / f"{key[:32]}.npz"
    images = _load(cached, key, labels, Image.getmodebands(mode))
    if images is not None:
        return DecodedFolder(images, labels, list(folder.classes))
    samples = folder.samples
    if progress:
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
    _store(cached, key, images, labels)
    return DecodedFolder(images, labels, list(folder.classes))


def _checksum(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).data)
    digest.update(np.ascontiguousarray(labels).data)
    return digest.hexdigest()


def _load(path: Path, key: str, labels: np.ndarray, channels: int) -> np.ndarray | None:
    """The images of the cache entry at `path` if it was made for `key` and is intact: uint8
    (len(labels), H, W, channels), the same labels, the stored checksum; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            if str(stored["key"]) != key:
                return None
            images, stored_labels = stored["images"], stored["labels"]
            checksum = str(stored["checksum"])
    except Exception:  # any damage (BadZipFile, ValueError, EOFError, KeyError, ...) only costs a decode
        return None
    if (images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(labels)
            or images.shape[3] != channels or not np.array_equal(stored_labels, labels)):
        return None
    return images if _checksum(images, labels) == checksum else None


def _store(path: Path, key: str, images: np.ndarray, labels: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, labels=labels, key=np.array(key),
                         checksum=np.array(_checksum(images, labels)))
    except (OSError, UserError):  # a cache that cannot be written only costs time next run
        pass
