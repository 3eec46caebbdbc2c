"""Datasets for evaluation, calibration and fine-tuning.

Two sources, picked by what the directory holds:

- MNIST in IDX format (``t10k-images-idx3-ubyte[.gz]`` + ``t10k-labels-idx1-ubyte[.gz]``).
  The project only has the official *test* set (10,000 digits) and splits it itself.
- An ImageFolder directory (one subfolder per class, ImageNet-val layout), read with
  torchvision and timm's evaluation transform for the model's data config.

Splits (samples in their stored / sorted order): a data set stored as ``train/`` and
``test/`` (or ``val/``) image folders, like CIFAR-10 or ImageNet, keeps its own split:
``"train"`` is ``train/``, ``"eval"`` is ``test/``, ``"all"`` is both. Otherwise the same rule
for MNIST and a single folder: index % 5 == 4 is ``"eval"`` (MNIST: 2,000 digits), the rest
``"train"`` (8,000), and ``"all"`` is everything, so a model fine-tuned on ``"train"`` is never
measured on the images it saw.

Images of a folder are converted to the model's channel count (greyscale, CMYK, palette and
RGBA files beside RGB ones; 16-bit greyscale scaled to 8 bits); a class folder without images,
an image that cannot be decoded (or has more pixels than PIL allows), or a directory link that
loops or reads a folder twice is a UserError naming it.

Calibration needs no labels: with ``labels_required=False`` a flat folder of images (no class
subfolders) is accepted too, its items labelled ``UNLABELLED`` (-1).

Every item is ``(image, label)``: a float32 tensor of shape ``data_config["input_size"]``
``(C, H, W)`` normalised with ``data_config["mean"]`` / ``["std"]``, and an int label.
Problems a user can fix raise :class:`~dimap_struct.errors.UserError` with one line.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (BatchSampler, ConcatDataset, DataLoader, Dataset, RandomSampler,
                              SequentialSampler, Subset)

from ..errors import UserError
from .timm_readers import hf_splits, reader_source, timm_images

DATA_ENV = "DIMAP_DATA"
"""Environment variable naming the data directory used when no path is given."""
SPLITS = ("train", "eval", "all")
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

IMAGE_MODES = {1: "L", 3: "RGB"}
"""PIL mode images are converted to, by the model's input channels."""

_IDX_MAGIC = {2051: 3, 2049: 1}  # magic -> number of dimensions (images, labels)
_CACHE_LIMIT = 256 * 2**20  # bytes: preprocessed MNIST splits up to this size stay in memory


def default_data(path=None):
    """`path` (--data), else the directory in $DIMAP_DATA; UserError if neither is given."""
    found = path or os.environ.get(DATA_ENV)
    if not found:
        raise UserError(f"no data directory: pass --data PATH or set {DATA_ENV}")
    return found


def split_indices(n: int, split: str) -> np.ndarray:
    """Indices of ``split`` among ``n`` samples: ``i % 5 == 4`` is eval, the rest train."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    idx = np.arange(n)
    if split == "all":
        return idx
    return idx[idx % 5 == 4] if split == "eval" else idx[idx % 5 != 4]


# ----------------------------------------------------------------------------------- IDX

def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed if its name ends in ``.gz``) into a uint8 array.

    Images (magic 2051) give shape ``(count, rows, cols)``, labels (magic 2049) ``(count,)``.
    Any unreadable, truncated or malformed file raises UserError naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 8:
        raise UserError(f"malformed IDX file {path}: only {len(raw)} bytes, no header")
    magic, count = (int(v) for v in np.frombuffer(raw, ">i4", 2))
    if magic not in _IDX_MAGIC:
        raise UserError(f"malformed IDX file {path}: magic {magic}, expected 2051 (images) "
                        "or 2049 (labels)")
    ndim = _IDX_MAGIC[magic]
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise UserError(f"malformed IDX file {path}: header truncated")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">i4", ndim, offset=4))
    if min(shape) < 0 or (ndim == 3 and min(shape[1:]) == 0):
        raise UserError(f"malformed IDX file {path}: bad sizes {shape}")
    expected = header + math.prod(shape)
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise UserError(f"malformed IDX file {path}: {what} ({len(raw)} bytes, "
                        f"expected {expected} for shape {shape})")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist_files(directory: Path) -> tuple[Path, Path] | None:
    found = [_find(directory, name) for name in MNIST_FILES]
    return (found[0], found[1]) if all(found) else None


def load_mnist(directory) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits of an MNIST directory: uint8 images ``(N, 28, 28)``, int64 labels ``(N,)``."""
    directory = Path(directory)
    files = _mnist_files(directory)
    if files is None:
        raise UserError(f"{directory} has no MNIST files ({' and '.join(MNIST_FILES)}, .gz or not)")
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3:
        raise UserError(f"malformed MNIST: {files[0]} holds labels, not images")
    if labels.ndim != 1:
        raise UserError(f"malformed MNIST: {files[1]} holds images, not labels")
    if len(images) != len(labels):
        raise UserError(f"malformed MNIST: {len(images)} images in {files[0]} but "
                        f"{len(labels)} labels in {files[1]}")
    if labels.size and labels.max() > 9:
        raise UserError(f"malformed MNIST: label {labels.max()} in {files[1]} (expected 0-9)")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


# ------------------------------------------------------------------------------- MNIST

def _input_size(data_config) -> tuple[int, int, int]:
    size = data_config.get("input_size")
    if isinstance(size, int):
        size = (3, size, size)
    if size is None or len(size) != 3:
        raise UserError(f"data config input_size must be (C, H, W), got {size!r}")
    return tuple(int(v) for v in size)


def _per_channel(data_config, key: str, channels: int) -> torch.Tensor:
    values = tuple(float(v) for v in data_config[key])
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserError(f"data config {key} has {len(values)} values for {channels} channels")
    return torch.tensor(values).view(1, channels, 1, 1)


class MNISTDataset(Dataset):
    """MNIST digits held in memory, shaped and normalised for one model.

    ``images``: uint8 ``(N, 28, 28)``; ``labels``: int64 ``(N,)``. Item ``i`` is
    ``(float32 (C, H, W), int)``: pixels scaled to [0, 1], resized bilinearly to (H, W),
    the gray channel repeated to C channels, normalised. With ``augment`` every fetch draws a
    small random affine (rotation +-10 degrees, translation up to 10 % of the side, scale
    0.9-1.1) merged with the resize into one ``grid_sample`` per batch.

    Batches are built at once (indexing with a list, or ``__getitems__`` for a plain
    DataLoader); without augmentation a preprocessed copy is kept when it is small (up to
    256 MiB).
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, data_config: dict, *,
                 augment: bool = False, seed: int = 0):
        self.images, self.labels = images, labels
        self.channels, self.height, self.width = _input_size(data_config)
        if self.channels not in (1, 3):
            raise UserError(f"MNIST needs 1 or 3 input channels, the model has {self.channels}")
        self.mean = _per_channel(data_config, "mean", self.channels)
        self.std = _per_channel(data_config, "std", self.channels)
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_rng: tuple[int, torch.Generator] | None = None
        self._cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        """An int gives one ``(image, label)``; a list of ints a whole batch
        ``(float32 (B, C, H, W), int64 (B,))`` (what :func:`build_loader` asks for)."""
        if isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.ndim == 0):
            return self.__getitems__([int(index)])[0]
        index = torch.as_tensor(index, dtype=torch.long)
        return self.batch(index), self.labels[index]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.batch(index).unbind(0), self.labels[index].tolist()))

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Preprocessed images for ``index`` as one float32 tensor ``(B, C, H, W)``."""
        if self.augment:
            return self._transform(index, self._rng())
        nbytes = 4 * len(self) * self.channels * self.height * self.width
        if self._cache is None and nbytes <= _CACHE_LIMIT:
            self._cache = self._transform(torch.arange(len(self)), None)
        if self._cache is not None:
            return self._cache[index]
        return self._transform(index, None)

    def seeded_batch(self, index: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Augmented images for ``index``, image ``i``'s draw from ``seeds[i]`` alone: the same
        image and seed give the same pixels in any batch, on any rank."""
        theta = torch.cat([_random_affine(1, torch.Generator().manual_seed(seed)) for seed in seeds])
        return self._transform(index, None, theta)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation draws of this process (or of this DataLoader worker) from
        ``seed``: a batch fetched next is then a function of ``seed`` and its indices only."""
        self._rng().manual_seed(seed)

    def _rng(self) -> torch.Generator:
        # In a DataLoader worker the copied generator would repeat the other workers' draws.
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self.generator
        if self._worker_rng is None or self._worker_rng[0] != info.seed:
            self._worker_rng = (info.seed, torch.Generator().manual_seed(info.seed))
        return self._worker_rng[1]

    def _transform(self, index: torch.Tensor, rng: torch.Generator | None,
                   theta: torch.Tensor | None = None) -> torch.Tensor:
        x = self.images[index].unsqueeze(1).float().div_(255.0)  # (B, 1, 28, 28)
        size = (self.height, self.width)
        if theta is None and rng is not None:
            theta = _random_affine(len(x), rng)
        if theta is None:
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        else:
            x = F.grid_sample(x, F.affine_grid(theta, [len(x), 1, *size],
                                               align_corners=False),
                              mode="bilinear", padding_mode="zeros", align_corners=False)
        x = x.expand(-1, self.channels, -1, -1)
        return ((x - self.mean) / self.std).contiguous()


def _random_affine(n: int, rng: torch.Generator, degrees: float = 10.0,
                   translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """``(n, 2, 3)`` sampling matrices for ``affine_grid``: output coordinates -> input."""
    angle = (torch.rand(n, generator=rng) * 2 - 1) * math.radians(degrees)
    zoom = torch.empty(n).uniform_(*scale, generator=rng)
    shift = (torch.rand(n, 2, generator=rng) * 2 - 1) * (2 * translate)  # grid spans [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


# ------------------------------------------------------------------------------ folders

class FolderSplit(Subset):
    """A split of an ImageFolder; keeps ``classes`` of the folder."""

    @property
    def classes(self):
        return self.dataset.classes


class FolderUnion(ConcatDataset):
    """Several image folders with the same classes, one after the other."""

    @property
    def classes(self):
        return self.datasets[0].classes


def _folder_reading(data_config: dict, train_augment: bool, normalized: bool = True):
    """(transform, loader) for image files: timm's transform for the data config and
    :func:`read_image` in the model's channel count. ``normalized=False``: the transform ends on
    uint8 tensors, to be normalised by timm's ``PrefetchLoader`` (its ``use_prefetcher``)."""
    # deferred (also below): image folders only; MNIST's IDX files (dimap-eval of an ONNX file on
    # MNIST) start without timm, torchvision and PIL
    from timm.data import create_transform

    config = {k: data_config[k] for k in ("input_size", "interpolation", "mean", "std",
                                         "crop_pct", "crop_mode") if k in data_config}
    channels = _input_size(data_config)[0]
    if channels not in IMAGE_MODES:
        raise UserError(f"image folders need a model with 1 or 3 input channels, this one has {channels}")
    return (create_transform(**config, is_training=train_augment, use_prefetcher=not normalized),
            functools.partial(read_image, mode=IMAGE_MODES[channels]))


def _image_folder(root: Path, split: str, data_config: dict, train_augment: bool, normalized: bool = True) -> Dataset:
    from torchvision.datasets import ImageFolder  # deferred: image folders only (see _folder_reading)

    transform, loader = _folder_reading(data_config, train_augment, normalized)
    check_links(root)  # before torchvision's walk, which follows links into any loop
    try:
        folder = ImageFolder(str(root), transform=transform, allow_empty=True, loader=loader)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"cannot read image folder {root}: {exc}") from None
    if not folder.samples:
        raise UserError(f"image folder {root} has class folders but no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    counts = np.bincount([label for _, label in folder.samples], minlength=len(folder.classes))
    if (counts == 0).any():
        empty = folder.classes[int(np.argmin(counts))]
        raise UserError(f"class folder {root / empty} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return FolderSplit(folder, split_indices(len(folder), split).tolist())


def check_links(root: Path) -> None:
    """Check that every folder under `root`, following directory links as torchvision's
    ImageFolder does, is a different folder; UserError naming the link otherwise.

    A link leading back up the tree (a loop) would be read until the OS gives up (copies of the
    images under the wrong class) or, with two such links, forever; a link to a folder read
    already would count its images twice. Links to folders elsewhere (a class folder kept on
    other storage) are fine."""
    root = Path(root)
    seen = {os.path.realpath(root): "."}  # real path -> where the walk reached it first
    stack = [(str(root), os.path.realpath(root))]
    while stack:
        folder, real = stack.pop()
        try:  # is_dir follows links; a dangling link is no folder
            entries = sorted((e for e in os.scandir(folder) if e.is_dir()), key=lambda e: e.name)
        except OSError:  # unreadable: ImageFolder's own walk skips it, as before
            continue
        below = []
        for entry in entries:
            where, target = os.path.relpath(entry.path, root), os.path.realpath(entry.path)
            if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                back = root if target == os.path.realpath(root) else seen.get(target, target)
                raise UserError(f"image folder {root}: link {where} leads back to {back} (a loop); remove it")
            if target in seen:
                raise UserError(f"image folder {root}: {seen[target]} and {where} are the same folder (through a "
                                "link), so its images would count twice; remove the link")
            seen[target] = where
            below.append((entry.path, target))
        stack.extend(reversed(below))  # depth first in name order: the first bad link is the one named


UNLABELLED = -1
"""The label of every image of an unlabelled (flat) folder: no class, so a loss that needs
labels fails loudly instead of quietly learning class 0."""


class UnlabelledFolder(Dataset):
    """The images of a flat folder (no class subfolders), for calibration, which needs no labels.

    ``files``: the image paths, sorted. Item ``i`` is ``(image, UNLABELLED)``; ``classes`` is
    empty (so :func:`num_classes` is 0) and ``labelled`` is False (:func:`is_labelled`).
    """

    labelled = False

    def __init__(self, files: list[str], transform, loader):
        self.files, self.transform, self.loader = files, transform, loader

    @property
    def classes(self) -> list[str]:
        return []

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        return self.transform(self.loader(self.files[index])), UNLABELLED


def _flat_images(root: Path) -> list[str]:
    """The image files directly in `root` (by suffix, as ImageFolder picks them), sorted."""
    return sorted(str(p) for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split_folders(root: Path) -> dict[str, Path] | None:
    """For a data set stored as `train/` and `test/` (or `val/`) image folders (CIFAR-10,
    ImageNet): {"train": train/, "eval": test/ or val/}; None for any other layout."""
    train = root / "train"
    held = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if held is None or not train.is_dir() or not any(p.is_dir() for p in train.iterdir()):
        return None
    return {"train": train, "eval": held}


def read_image(path: str, mode: str = "RGB"):
    """The image at `path` as a PIL image in `mode` ('RGB' or 'L'): greyscale, CMYK, palette
    and RGBA files are converted, so a folder may mix them; 16-bit greyscale is scaled to 8 bits
    (:func:`_to_8_bits`). UserError naming the file if it is truncated, not an image, has
    floating-point pixels, or has more pixels than PIL decodes (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``; below that PIL's warning is silenced)."""
    from PIL import Image  # deferred: image folders only (see _folder_reading)

    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency", DecompressionBombWarning
            image = _to_8_bits(Image.open(f), path)
            return image.convert(mode)  # decodes the whole file: truncation shows here
    except Image.DecompressionBombError as err:  # not an OSError
        raise UserError(f"cannot read image {path}: {_too_many_pixels(err)}") from None
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read image {path}: not an image file PIL can decode") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for broken files
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read image {path}: {detail}") from None


def _to_8_bits(image, path: str):
    """`image`, or for 16-bit greyscale (PIL modes ``I;16*``, and ``I`` read as 0-65535) an
    8-bit ``L`` image of value / 257, rounded: PIL's convert would clip every value past 255.
    UserError for floating-point pixels (mode ``F``), which have no set range."""
    from PIL import Image  # deferred: image folders only (see _folder_reading)

    if image.mode == "F":
        raise UserError(f"cannot read image {path}: floating-point pixels (PIL mode F) have no set range; "
                        "save it with 8 or 16 bits per channel")
    if image.mode != "I" and not image.mode.startswith("I;16"):
        return image
    wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return Image.fromarray(((wide + 128) // 257).astype(np.uint8))  # (v + 128) // 257 == round(v / 257)


def _too_many_pixels(err: Exception) -> str:
    """'N pixels, more than PIL's limit of M ...' from PIL's DecompressionBombError."""
    found = re.search(r"\((\d+) pixels\).*?(\d+) pixels", str(err))
    if found is None:
        return str(err).strip().splitlines()[0][:160]
    return (f"{found[1]} pixels, more than PIL's limit of {found[2]} (its guard against decompression "
            "bombs); use a smaller image")


# ------------------------------------------------------------------------------ public

def build_dataset(path, split: str, data_config: dict, *, train_augment: bool = False,
                  seed: int = 0, labels_required: bool = True, normalized: bool = True) -> Dataset:
    """The ``split`` ("train", "eval", "all") of the dataset at ``path`` for ``data_config``.

    ``path`` None means ``$DIMAP_DATA`` (:func:`default_data`). ``data_config`` is timm's
    (``resolve_model_data_config``): ``input_size`` (C, H, W), ``mean``, ``std`` and, for
    image folders, ``interpolation`` / ``crop_pct`` / ``crop_mode``. ``train_augment``: random
    affine for MNIST (drawn from ``seed``), timm's training transform for image folders.
    ``labels_required=False`` (calibration) also accepts a flat folder of images: an
    :class:`UnlabelledFolder` (labels ``UNLABELLED``, no classes), split by the index % 5 rule;
    with True (evaluation, training) such a folder is a UserError. ``normalized=False``: image
    files come as uint8 tensors, for timm's ``PrefetchLoader`` to normalise (a quarter of the
    bytes through a worker's shared memory); MNIST items are normalised either way.
    """
    split_indices(0, split)  # validates the name
    given = default_data(path)
    source = reader_source(given)
    if source is not None:
        return _timm_source(source, given, split, data_config, train_augment, normalized)
    root = Path(given)
    if not root.exists():
        raise UserError(f"data directory not found: {root}")
    if not root.is_dir():
        raise UserError(f"data path is not a directory: {root}")
    if _mnist_files(root):
        images, labels = load_mnist(root)
        index = torch.from_numpy(split_indices(len(labels), split))
        return MNISTDataset(images[index], labels[index], data_config,
                            augment=train_augment, seed=seed)
    folders = split_folders(root)
    if folders is not None:  # the data set's own split: train/ to learn, test/ (val/) to measure
        if split == "all":
            parts = [_image_folder(folders[s], "all", data_config, train_augment, normalized) for s in ("train", "eval")]
            if parts[0].classes != parts[1].classes:
                raise UserError(f"{folders['train']} and {folders['eval']} hold different classes")
            return FolderUnion(parts)
        return _image_folder(folders[split], "all", data_config, train_augment, normalized)
    if any(p.is_dir() for p in root.iterdir()):
        return _image_folder(root, split, data_config, train_augment, normalized)
    files = _flat_images(root)
    if files and labels_required:
        raise UserError(f"{root} holds images but no class folders: evaluation and training need one "
                        "subfolder per class")
    if files:
        folder = UnlabelledFolder(files, *_folder_reading(data_config, train_augment, normalized))
        return FolderSplit(folder, split_indices(len(folder), split).tolist())
    flat = "" if labels_required else ", or, for calibration, a folder of images"
    raise UserError(f"{root} is neither MNIST (IDX files {MNIST_FILES[0]}[.gz] and "
                    f"{MNIST_FILES[1]}[.gz]) nor an image folder (one subfolder per class{flat})")


def _timm_source(source: str, path: str, split: str, data_config: dict, train_augment: bool,
                 normalized: bool) -> Dataset:
    """A source of timm's readers (`timm_readers`), split as the data set is (train.tar and
    test.tar; an HF dataset's train and validation) or else by the index % 5 rule."""
    transform, _ = _folder_reading(data_config, train_augment, normalized)
    mode = IMAGE_MODES[_input_size(data_config)[0]]
    if source == "hfds":
        parts = hf_splits(path.split("/", 1)[1])
    else:
        parts = {"train": "train", "eval": "eval"} if source == "tar-split" else {"train": None}
    if "eval" not in parts:
        whole = timm_images(source, path, parts["train"], transform, mode)
        return FolderSplit(whole, split_indices(len(whole), split).tolist())
    read = [timm_images(source, path, parts[s], transform, mode) for s in (("train", "eval") if split == "all"
                                                                          else (split,))]
    if len(read) == 2 and read[0].classes != read[1].classes:
        raise UserError(f"{path}: the training and held-out parts hold different classes")
    return read[0] if len(read) == 1 else FolderUnion(read)


def num_classes(dataset: Dataset) -> int:
    """Number of classes of a dataset made by :func:`build_dataset` (or a Subset of one)."""
    while not hasattr(dataset, "classes") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if not hasattr(dataset, "classes"):
        raise TypeError(f"{type(dataset).__name__} does not say its classes")
    return len(dataset.classes)


def is_labelled(dataset: Dataset) -> bool:
    """False for a flat folder read with ``labels_required=False`` (every label is
    ``UNLABELLED``); True for every other dataset of :func:`build_dataset` (or a Subset of one)."""
    while not hasattr(dataset, "labelled") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return getattr(dataset, "labelled", True)


def build_loader(path, split: str, data_config: dict, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, train_augment: bool = False, num_workers: int = 0,
                 labels_required: bool = True) -> DataLoader:
    """A DataLoader over :func:`build_dataset`; batches are ``(float32 (B, C, H, W), int64 (B,))``.

    The order (with ``shuffle``) and the MNIST augmentation are fixed by ``seed``;
    ``labels_required`` as for :func:`build_dataset`.
    """
    dataset = build_dataset(path, split, data_config, train_augment=train_augment, seed=seed,
                            labels_required=labels_required)
    generator = torch.Generator().manual_seed(seed)
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0, generator=generator)
    if isinstance(dataset, MNISTDataset):
        # Whole batches come from the dataset in one piece: no per-item split and re-stack.
        order = (RandomSampler(dataset, generator=generator) if shuffle
                 else SequentialSampler(dataset))
        return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False),
                          batch_size=None, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **common)
