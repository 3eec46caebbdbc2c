"""Datasets (dimap_struct.data) and the committed reference Swin (dimap_struct.models.reference)."""
import gzip
import struct

import numpy as np
import pytest
import torch

from dimap_struct.data import DATA_ENV, build_dataset, build_loader, num_classes, read_idx, split_indices
from dimap_struct.errors import UserError
from shared_data import mnist_dir

MNIST = mnist_dir()
needs_mnist = pytest.mark.skipif(MNIST is None, reason="shared MNIST not found ($DIMAP_DATA or ../shared/data/mnist)")

MNIST_CFG = {"input_size": (1, 32, 32), "mean": (0.1307,), "std": (0.3081,)}
IMAGENET_CFG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.9,
                "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _write_idx(path, magic, dims, payload: bytes, compress=False):
    raw = struct.pack(f">{1 + len(dims)}i", magic, *dims) + payload
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_split_indices_partition():
    train, held = split_indices(10_000, "train"), split_indices(10_000, "eval")
    assert len(train) == 8000 and len(held) == 2000
    assert not set(train) & set(held)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(10_000))
    with pytest.raises(UserError):
        split_indices(10, "test")


@needs_mnist
def test_mnist_splits_labels_and_classes():
    train, held = build_dataset(MNIST, "train", MNIST_CFG), build_dataset(MNIST, "eval", MNIST_CFG)
    everything = build_dataset(MNIST, "all", MNIST_CFG)
    assert (len(train), len(held), len(everything)) == (8000, 2000, 10_000)
    for ds in (train, held):
        assert num_classes(ds) == 10
        assert sorted(ds.labels.unique().tolist()) == list(range(10))
    # disjoint: no eval digit appears in the train split
    seen = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in seen for img in held.images[:200])


@needs_mnist
@pytest.mark.parametrize("cfg", [MNIST_CFG, IMAGENET_CFG], ids=["1x32", "3x224"])
def test_mnist_shapes_and_normalisation(cfg):
    ds = build_dataset(MNIST, "eval", cfg)
    image, label = ds[3]
    assert image.shape == cfg["input_size"] and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label <= 9
    mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
    # background pixels (0) map to -mean/std, full ink (1) never exceeds (1-mean)/std
    assert torch.allclose(image.amin(dim=(1, 2)), -mean / std, atol=1e-5)
    assert (image.amax(dim=(1, 2)) <= (1 - mean) / std + 1e-5).all()
    if cfg["input_size"][0] == 3:  # the gray channel is repeated
        assert torch.allclose(image[0] * std[0] + mean[0], image[2] * std[2] + mean[2], atol=1e-5)
    images, labels = next(iter(build_loader(MNIST, "eval", cfg, 8)))
    assert images.shape == (8, *cfg["input_size"]) and labels.dtype == torch.int64
    assert torch.equal(images[3], image)


@needs_mnist
def test_mnist_augmentation_is_seeded():
    def first_batch(seed):
        loader = build_loader(MNIST, "train", MNIST_CFG, 16, shuffle=True, seed=seed,
                              train_augment=True)
        return next(iter(loader))

    (a, ya), (b, yb), (c, _) = first_batch(1), first_batch(1), first_batch(2)
    assert torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)
    assert a.shape == (16, 1, 32, 32) and torch.isfinite(a).all()


def test_no_path_reads_the_environment(monkeypatch):
    """Without a path the library reads $DIMAP_DATA; without either, one clear UserError."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(UserError, match=DATA_ENV):
        build_dataset(None, "eval", MNIST_CFG)
    if MNIST is not None:
        monkeypatch.setenv(DATA_ENV, str(MNIST))
        assert len(build_dataset(None, "eval", MNIST_CFG)) == 2000


def test_read_idx_roundtrip_and_errors(tmp_path):
    good = tmp_path / "good-images-idx3-ubyte.gz"
    _write_idx(good, 2051, (2, 3, 4), bytes(range(24)), compress=True)
    assert read_idx(good).shape == (2, 3, 4) and read_idx(good)[1, 2, 3] == 23
    labels = tmp_path / "labels-idx1-ubyte"
    _write_idx(labels, 2049, (3,), bytes([7, 8, 9]))
    assert read_idx(labels).tolist() == [7, 8, 9]

    cases = {
        "truncated": (2051, (2, 3, 4), bytes(20)),
        "magic": (1234, (2, 3, 4), bytes(24)),
    }
    for name, (magic, dims, payload) in cases.items():
        bad = tmp_path / f"{name}-idx3-ubyte"
        _write_idx(bad, magic, dims, payload)
        with pytest.raises(UserError, match=name):
            read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00")
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(b"not gzip at all")
    for path in (short, broken_gz, tmp_path / "absent"):
        with pytest.raises(UserError, match=path.name):
            read_idx(path)


def test_malformed_mnist_directory(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, (3, 28, 28), bytes(3 * 784))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, (3,), bytes([1, 2]))  # truncated
    with pytest.raises(UserError, match="t10k-labels"):
        build_dataset(tmp_path, "all", MNIST_CFG)


def test_directory_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_dataset(tmp_path / "missing", "eval", MNIST_CFG)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="neither MNIST .* nor an image folder"):
        build_dataset(tmp_path, "eval", MNIST_CFG)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images"):
        build_dataset(tmp_path, "all", IMAGENET_CFG)


def test_image_folder_with_timm_transforms(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    full = build_dataset(tmp_path, "all", IMAGENET_CFG)
    assert len(full) == 10 and num_classes(full) == 2
    image, label = full[7]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 1
    # the same index % 5 rule as MNIST: items 4 and 9 are the eval split
    held = build_dataset(tmp_path, "eval", IMAGENET_CFG)
    assert held.indices == [4, 9] and num_classes(held) == 2
    images, labels = next(iter(build_loader(tmp_path, "train", IMAGENET_CFG, 8)))
    assert images.shape == (8, 3, 224, 224) and labels.tolist() == [0] * 4 + [1] * 4


def test_reference_model_loads_with_its_data_config():
    """The committed reference Swin loads (SHA-256 checked) and reports its data config through
    timm (its top-1 on the eval split: tests/test_eval.py, through dimap-eval)."""
    import timm

    from dimap_struct.models.reference import REFERENCE_DATA_CONFIG, build_reference

    model = build_reference()
    cfg = timm.data.resolve_model_data_config(model)
    assert {k: cfg[k] for k in REFERENCE_DATA_CONFIG} == REFERENCE_DATA_CONFIG
    assert not model.training


def test_reference_checks_sha256(tmp_path, monkeypatch):
    import dataclasses
    import json

    from dimap_struct.models import reference

    ref = reference.REFERENCES["reference-mnist"]
    if not ref.weights.is_file():
        pytest.skip("reference weights not committed")
    recipe = tmp_path / "reference.json"
    recipe.write_text(json.dumps({"sha256": "0" * 64}))
    monkeypatch.setitem(reference.REFERENCES, "reference-mnist", dataclasses.replace(ref, recipe=recipe))
    with pytest.raises(RuntimeError, match="SHA-256"):
        reference.build_reference()
