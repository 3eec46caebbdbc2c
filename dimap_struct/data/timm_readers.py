"""Data that timm's `create_dataset` reads besides image folders: tar archives of images and
Hugging Face datasets. `datasets.build_dataset` hands a source here when `reader_source` names it.

- ``PATH.tar``: an archive of class folders, or a folder of one tar per class (timm's
  ``ReaderImageInTar``); one split, divided by the index % 5 rule like a single image folder;
- a folder holding ``train.tar`` and ``test.tar`` (or ``val.tar``): the data set's own split,
  like ``train/`` and ``test/`` folders;
- ``hfds/NAME``: a Hugging Face dataset by hub name or local path (timm's ``ReaderHfds``, through
  the ``datasets`` package, `pip install datasets`): its ``train`` split trains, its
  ``validation`` (else ``test``) split measures; a dataset with one split is divided by the
  index % 5 rule.

Streams (``wds/``, ``hfids/``, ``tfds/``) are refused: fine-tuning reads each image by index
(its own augmentation seed, resuming mid-epoch), which a stream cannot give.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import UserError

HF_PREFIX = "hfds/"
STREAM_PREFIXES = ("wds/", "hfids/", "tfds/")
HELD_OUT = ("test", "val")
"""Names of a held-out tar beside ``train.tar``, in the order they are looked for."""
HF_HELD_OUT = ("validation", "test", "val")


def reader_source(path) -> str | None:
    """What `path` (the --data text) is for timm's readers: "hfds", "tar" (one archive or a folder
    of per-class archives), "tar-split" (train.tar beside test.tar / val.tar), or None (not theirs:
    MNIST or an image folder). UserError for a stream."""
    text = str(path)
    prefix = text.split("/", 1)[0].lower() + "/"
    if prefix in STREAM_PREFIXES:
        raise UserError(f"{text}: {prefix} data is a stream, and fine-tuning reads images by index (each with its "
                        "own seed, resuming mid-epoch); use an image folder, a .tar of class folders or hfds/NAME")
    if prefix == HF_PREFIX:
        return "hfds"
    root = Path(text)
    if root.is_file() and root.suffix == ".tar":
        return "tar"
    if root.is_dir():
        if tar_splits(root):
            return "tar-split"
        if not any(p.is_dir() for p in root.iterdir()) and any(p.suffix == ".tar" for p in root.iterdir()):
            return "tar"
    return None


def tar_splits(root: Path) -> dict[str, Path] | None:
    """{"train": train.tar, "eval": test.tar or val.tar} in `root`, or None."""
    held = next((root / f"{name}.tar" for name in HELD_OUT if (root / f"{name}.tar").is_file()), None)
    train = root / "train.tar"
    return {"train": train, "eval": held} if held is not None and train.is_file() else None


def hf_splits(name: str) -> dict[str, str]:
    """{"train": "train", "eval": its held-out split} of the Hugging Face dataset `name`; only
    "train" when it has no held-out split. UserError without the `datasets` package, for an
    unknown dataset, or one without a train split."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"{HF_PREFIX}{name} needs the Hugging Face datasets package: pip install datasets") from None
    try:
        names = datasets.get_dataset_split_names(name)
    except Exception as exc:  # noqa: BLE001 (the hub, the file system and the builders raise many kinds)
        raise UserError(f"cannot read the Hugging Face dataset {name!r}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if "train" not in names:
        raise UserError(f"the Hugging Face dataset {name!r} has no 'train' split (it has {', '.join(names)})")
    held = next((n for n in HF_HELD_OUT if n in names), None)
    return {"train": "train", **({"eval": held} if held else {})}


def timm_images(source: str, path: str, part: str | None, transform, mode: str) -> Dataset:
    """The images of one part of `path` through `timm.data.create_dataset`, items
    ``(transform(image), label)``, with ``classes`` (class names by label) as our datasets have.

    source: what `reader_source` said; part: "train" / "eval" (which tar) for "tar-split", the
    split's name for "hfds", None for "tar"; mode: the PIL mode images are converted to."""
    from timm.data import create_dataset  # deferred: only these sources need it at once

    if source == "tar-split":
        root, name = str(tar_splits(Path(path))[part]), ""
    elif source == "tar":
        root, name = path, ""
    else:
        root, name = None, path
    try:
        dataset = create_dataset(name, root=root, split=part if source == "hfds" else "train", search_split=False,
                                 transform=transform, input_img_mode=mode)
    except (OSError, ValueError, tarfile.TarError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    mapping = getattr(dataset.reader, "class_to_idx", None) or getattr(dataset.reader, "class_name_to_idx", {})
    dataset.classes = [str(c) for c in sorted(mapping, key=mapping.get)]
    if not len(dataset):
        raise UserError(f"{path} holds no images")
    return dataset
