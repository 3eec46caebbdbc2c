"""Defects of issue 27 in dimap_struct.data: directory links that loop (#7), 16-bit images (#8),
the decode cache's integrity (#12), images past PIL's decompression-bomb limit (#15), and flat
folders of images for calibration (#35). Small synthetic folders only."""
import contextlib
import os
import signal
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from dimap_struct import data
from dimap_struct.data import build_dataset, num_classes
from dimap_struct.data.datasets import read_image
from dimap_struct.data.decoded import CACHE_ENV, decoded_folder
from dimap_struct.errors import UserError

CFG = {"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0,
       "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _images(folder, count, seed=0, size=(8, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def _classes(root, names=("a", "b"), per_class=5):
    for k, name in enumerate(names):
        _images(root / name, per_class, seed=k)
    return root


class Hung(Exception):
    """Not TimeoutError: that is an OSError, which os.walk swallows."""


@contextlib.contextmanager
def _deadline(seconds):
    """Fail instead of hanging: the walk is Python code, so SIGALRM's handler interrupts it."""
    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------- #7 directory links

def test_a_link_back_up_the_tree_is_refused_by_name(tmp_path):
    root = _classes(tmp_path / "data")
    os.symlink("..", root / "a" / "loop")
    message = rf"image folder {root}: link a/loop leads back to {root} \(a loop\); remove it"
    with _deadline(60), pytest.raises(UserError, match=message):
        build_dataset(root, "all", CFG)


def test_two_loop_links_fail_fast_instead_of_hanging(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = _classes(tmp_path / "data")
    os.symlink("..", root / "a" / "loop")
    os.symlink("..", root / "b" / "loop")
    with _deadline(30), pytest.raises(UserError, match=r"link a/loop .*\(a loop\)"):
        build_dataset(root, "all", CFG)
    with _deadline(30), pytest.raises(UserError, match=r"link a/loop .*\(a loop\)"):
        decoded_folder(root)


def test_links_to_folders_outside_the_tree_keep_working(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    storage = tmp_path / "storage"
    _images(storage / "cats", 4, seed=1)
    _images(storage / "more_dogs", 3, seed=2)
    root = tmp_path / "data"
    root.mkdir()
    os.symlink(storage / "cats", root / "cat")  # a whole class folder kept elsewhere
    _images(root / "dog", 2, seed=3)
    os.symlink(storage / "more_dogs", root / "dog" / "more")  # part of a class kept elsewhere
    dataset = build_dataset(root, "all", CFG)
    labels = [label for _, label in dataset.dataset.samples]
    assert labels == [0] * 4 + [1] * 5 and num_classes(dataset) == 2
    assert decoded_folder(root).labels.tolist() == labels


def test_a_link_reading_another_class_twice_is_refused(tmp_path):
    root = _classes(tmp_path / "data")
    os.symlink("../b", root / "a" / "also_b")  # b's images would count as a's too
    with pytest.raises(UserError, match=r": b and a/also_b are the same folder .*count twice; remove the link"):
        build_dataset(root, "all", CFG)


# ---------------------------------------------------------------------- #8 16-bit images

def _ramp16():
    return np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_greyscale_is_scaled_to_8_bits(tmp_path, mode):
    values = _ramp16()
    path = tmp_path / "deep.png"
    if mode == "I;16":
        Image.fromarray(values).save(path)
    else:
        path = tmp_path / "deep.tif"
        Image.fromarray(values.astype(np.int32)).save(path)
    assert Image.open(path).mode == mode  # what PIL reopens it as: the case under test
    expected = np.round(values / 257).astype(np.uint8)
    grey = np.asarray(read_image(str(path), "L"))
    assert np.array_equal(grey, expected)
    rgb = np.asarray(read_image(str(path), "RGB"))
    assert all(np.array_equal(rgb[..., c], expected) for c in range(3))


def test_a_floating_point_image_is_refused_by_name(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(path)
    assert Image.open(path).mode == "F"
    with pytest.raises(UserError, match=r"cannot read image .*float\.tif: floating-point"):
        read_image(str(path), "RGB")


# ---------------------------------------------------------------------- #12 decode cache

@pytest.fixture
def cached_folder(tmp_path, monkeypatch):
    """A 60-image folder (3 classes) decoded once: (root, first result, its cache file)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = _classes(tmp_path / "data", ("x", "y", "z"), 20)
    first = decoded_folder(root)
    (entry,) = (tmp_path / "cache").iterdir()
    return root, first, entry


def _same(a, b):
    return np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels) and a.classes == b.classes


def test_a_foreign_cache_entry_is_rebuilt(cached_folder):
    root, first, entry = cached_folder
    assert first.images.shape == (60, 8, 8, 3)
    with open(entry, "wb") as f:  # another folder's valid entry in this slot
        np.savez(f, images=first.images[:2], labels=first.labels[:2])
    again = decoded_folder(root)
    assert _same(again, first)
    assert _same(decoded_folder(root), first)  # the rebuilt entry is read back


def test_a_truncated_cache_entry_is_rebuilt(cached_folder):
    root, first, entry = cached_folder
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    assert _same(decoded_folder(root), first)


def test_a_flipped_byte_in_the_cached_images_is_rebuilt(cached_folder):
    root, first, entry = cached_folder
    raw = bytearray(entry.read_bytes())
    with zipfile.ZipFile(entry) as zf:  # flip a byte well inside the images array's data
        info = zf.getinfo("images.npy")
    at = info.header_offset + 200 + first.images.size // 2
    assert at < info.header_offset + info.file_size
    raw[at] ^= 0x01
    entry.write_bytes(bytes(raw))
    assert _same(decoded_folder(root), first)


def test_an_entry_whose_images_do_not_match_its_checksum_is_rebuilt(cached_folder):
    root, first, entry = cached_folder
    with np.load(entry) as stored:  # a well-formed entry for this folder, images changed
        fields = {name: stored[name] for name in stored.files}
    fields["images"] = 255 - fields["images"]
    with open(entry, "wb") as f:
        np.savez(f, **fields)
    assert _same(decoded_folder(root), first)


# -------------------------------------------------------------- #15 decompression bombs

def test_an_image_past_pils_limit_is_a_user_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses past 2x: 200 pixels
    root = tmp_path / "data"
    _images(root / "a", 1, size=(20, 20))  # 400 pixels
    path = root / "a" / "000.png"
    with pytest.raises(UserError, match=rf"cannot read image {path}: 400 pixels, more than PIL's limit of 200"):
        read_image(str(path))
    with pytest.raises(UserError, match=r"000\.png: 400 pixels"):
        build_dataset(root, "all", CFG)[0]


def test_an_image_between_1x_and_2x_the_limit_is_read_without_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _images(tmp_path, 1, size=(12, 12))  # 144 pixels: PIL only warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(str(tmp_path / "000.png"))
    assert image.size == (12, 12)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


# ------------------------------------------------------------ #35 flat folders of images

def test_a_flat_folder_is_unlabelled_calibration_data(tmp_path):
    _images(tmp_path, 10)
    (tmp_path / "notes.txt").write_text("not an image")
    train = build_dataset(tmp_path, "train", CFG, labels_required=False)
    assert len(train) == 8 and num_classes(train) == 0 and not data.is_labelled(train)
    image, label = train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == -1
    assert len(build_dataset(tmp_path, "all", CFG, labels_required=False)) == 10
    images, labels = next(iter(data.build_loader(tmp_path, "all", CFG, 4, labels_required=False)))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [data.UNLABELLED] * 4 == [-1] * 4


def test_a_flat_folder_for_evaluation_or_training_is_one_clear_line(tmp_path):
    _images(tmp_path, 3)
    for required in ({}, {"labels_required": True}):
        with pytest.raises(UserError, match=r"holds images but no class folders: evaluation and training "
                                            r"need one subfolder per class") as err:
            build_dataset(tmp_path, "eval", CFG, **required)
        assert "\n" not in str(err.value)


def test_labelled_data_says_so(tmp_path):
    root = _classes(tmp_path / "data")
    assert data.is_labelled(build_dataset(root, "all", CFG, labels_required=False))
