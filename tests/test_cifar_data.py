"""Real photographs: a few dozen CIFAR-10 images (read from ../shared/data/cifar10, copied into a
temporary folder of the same layout), the data set's own train/test split, the decode cache,
and the CIFAR-10 reference model's names."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dimap_struct.data import build_dataset, num_classes
from dimap_struct.data.decoded import CACHE_ENV, decoded_folder
from dimap_struct.errors import UserError
from dimap_struct.models.reference import CIFAR10_DATA_CONFIG
from shared_data import CIFAR

pytestmark = pytest.mark.skipif(not (CIFAR / "test").is_dir(), reason="needs ../shared/data/cifar10")


def test_the_data_sets_own_split(few):
    train = build_dataset(few, "train", CIFAR10_DATA_CONFIG)
    test = build_dataset(few, "eval", CIFAR10_DATA_CONFIG)
    both = build_dataset(few, "all", CIFAR10_DATA_CONFIG)
    assert (len(train), len(test), len(both)) == (30, 20, 50)
    assert num_classes(train) == num_classes(test) == num_classes(both) == 10
    assert train.classes[:3] == ["airplane", "automobile", "bird"]
    image, label = test[0]
    assert image.shape == (3, 32, 32) and label == 0
    # the same pixels as PIL's decode, normalised with the data config
    first = sorted((few / "test" / "airplane").iterdir())[0]
    pixels = torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(CIFAR10_DATA_CONFIG[k]).view(3, 1, 1) for k in ("mean", "std"))
    assert torch.allclose(image, (pixels - mean) / std, atol=1e-5)


def test_a_class_folder_without_images_is_named(few, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(few, root)
    for image in (root / "test" / "cat").iterdir():
        image.unlink()
    with pytest.raises(UserError, match=r"class folder .*test/cat has no images"):
        build_dataset(root, "eval", CIFAR10_DATA_CONFIG)


def test_decode_cache_is_keyed_by_the_files(few, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "c"
    shutil.copytree(few / "train", root)
    first = decoded_folder(root)
    assert first.images.shape == (30, 32, 32, 3) and first.images.dtype == np.uint8
    assert first.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = decoded_folder(root)
    assert np.array_equal(again.images, first.images)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # read from the cache
    shutil.copy(sorted((root / "cat").iterdir())[0], root / "cat" / "zz_extra.jpg")
    changed = decoded_folder(root)
    assert len(changed.labels) == 31 and len(list((tmp_path / "cache").iterdir())) == 2
    assert not [p for p in root.rglob("*.npz")], "the cache never goes into the data folder"


def test_reference_names():
    from dimap_struct.models import load_model, resolve_name

    assert resolve_name("reference") == "reference-mnist"
    loaded = load_model("reference-cifar10", pretrained=False)
    assert tuple(loaded.data_config["input_size"]) == (3, 32, 32)
    assert [len(stage.blocks) for stage in loaded.model.layers] == [2, 2, 6, 2]
    assert [stage.blocks[0].attn.num_heads for stage in loaded.model.layers] == [2, 4, 8, 16]


def test_cifar_reference_recognises_real_photographs(tmp_path):
    """The committed CIFAR-10 reference on 5 test photos per class (50 images it never saw):
    at least 70% (its recipe records the full test set's figure)."""
    from dimap_struct.deploy.evaluate import accuracy, torch_classifier
    from dimap_struct.models import load_model
    from dimap_struct.models.reference import REFERENCES

    if not REFERENCES["reference-cifar10"].weights.is_file():
        pytest.skip("CIFAR-10 reference weights not committed")
    root = tmp_path / "five"
    for folder in sorted((CIFAR / "test").iterdir()):
        (root / "test" / folder.name).mkdir(parents=True)
        (root / "train" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:5]:
            shutil.copy(image, root / "test" / folder.name / image.name)
            shutil.copy(image, root / "train" / folder.name / image.name)
    loaded = load_model("reference-cifar10")
    result = accuracy(torch_classifier(loaded.model, loaded.data_config, "", 10), root, split="eval")
    assert result["images"] == 50 and result["top1"] >= 70.0, result


def test_the_removed_v1_weights_are_named_with_where_to_find_them():
    """`reference-cifar10-v1` left the package: asking for it is one UserError that gives the git
    command that restores its weights and the flag that loads them."""
    from dimap_struct.models import load_model
    from dimap_struct.models.reference import REFERENCES, V1_COMMIT

    assert "reference-cifar10-v1" not in REFERENCES
    with pytest.raises(UserError, match=f"git show {V1_COMMIT}:dimap_struct/models/weights/"
                                        "reference_cifar10_v1.safetensors") as err:
        load_model("reference-cifar10-v1")
    assert "--checkpoint" in str(err.value) and "\n" not in str(err.value)


def test_training_batches_leave_the_workers_as_uint8_and_equal_the_normalised_images(few):
    """The training loader ships uint8 from its worker and timm's PrefetchLoader normalises them: each
    batch equals the images the float path makes from the same per-image seeds (`image_seed`)."""
    import random

    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover.finetune import DistContext, image_seed, train_loader

    loader, batches, workers = train_loader(few, CIFAR10_DATA_CONFIG, TrainingOptions(batch_size=4, workers=1),
                                            DistContext.local(), seed=3)
    batches.set_epoch(1)
    (images, labels), = [next(iter(loader))]
    assert workers == 1 and images.dtype == torch.float32 and images.shape == (4, 3, 32, 32)
    floats = build_dataset(few, "train", CIFAR10_DATA_CONFIG, train_augment=True)
    (_, first), = [next(iter(batches))]
    expected = []
    for index in first:
        seed = image_seed(3, 1, index)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
        expected.append(floats[index])
    assert torch.equal(labels, torch.tensor([label for _, label in expected]))
    assert torch.allclose(images, torch.stack([image for image, _ in expected]), atol=1e-5)


def _tar(folder: Path, path: Path) -> Path:
    """`folder`'s class folders as one tar archive (members CLASS/FILE)."""
    import tarfile

    with tarfile.open(path, "w") as tar:
        for image in sorted(folder.rglob("*.jpg")):
            tar.add(image, arcname=image.relative_to(folder).as_posix())
    return path


def _by_label(dataset) -> dict[int, list[float]]:
    """Each label's images, as sorted pixel sums: the same photos in any order give the same dict."""
    found: dict[int, list[float]] = {}
    for image, label in (dataset[i] for i in range(len(dataset))):
        found.setdefault(int(label), []).append(round(float(image.double().sum()), 3))
    return {label: sorted(sums) for label, sums in found.items()}


def test_tar_archives_read_through_timm_give_the_folders_images(few, tmp_path):
    """A folder of train.tar and test.tar keeps the data set's split; one .tar is split by the
    index % 5 rule; both read (timm's ReaderImageInTar) the same photos, classes and pixels as the
    image folders."""
    from dimap_struct.data.timm_readers import reader_source

    split = tmp_path / "split"
    split.mkdir()
    for part in ("train", "test"):
        _tar(few / part, split / f"{part}.tar")
    single = _tar(few / "train", tmp_path / "train_only.tar")
    assert (reader_source(split), reader_source(single), reader_source(few)) == ("tar-split", "tar", None)
    for part in ("train", "eval"):
        archive, folder = (build_dataset(root, part, CIFAR10_DATA_CONFIG) for root in (split, few))
        assert archive.classes == folder.classes and len(archive) == len(folder)
        assert _by_label(archive) == _by_label(folder)
    assert len(build_dataset(split, "all", CIFAR10_DATA_CONFIG)) == 50
    train, held = (build_dataset(single, part, CIFAR10_DATA_CONFIG) for part in ("train", "eval"))
    assert (len(train), len(held), num_classes(train)) == (24, 6, 10)


def test_streams_and_missing_readers_are_one_line_errors(tmp_path):
    from dimap_struct.data.timm_readers import reader_source

    for spec in ("wds/imagenet", "hfids/beans", "tfds/cifar10"):
        with pytest.raises(UserError, match="is a stream, and fine-tuning reads images by index"):
            build_dataset(spec, "train", CIFAR10_DATA_CONFIG)
    (tmp_path / "broken.tar").write_bytes(b"not a tar archive")
    assert reader_source(tmp_path / "broken.tar") == "tar"
    with pytest.raises(UserError, match="cannot read"):
        build_dataset(tmp_path / "broken.tar", "train", CIFAR10_DATA_CONFIG)


def test_a_hugging_face_dataset_reads_the_same_photos(few, tmp_path, monkeypatch):
    """hfds/PATH (timm's ReaderHfds through `datasets`; here a local folder that `datasets` reads as
    its imagefolder builder): its train and test splits hold the folder's photos, classes and pixels."""
    import datasets  # the `datasets` extra, which `make test` installs
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    spec = f"hfds/{few}"
    for part in ("train", "eval"):
        hub, folder = (build_dataset(root, part, CIFAR10_DATA_CONFIG) for root in (spec, few))
        assert hub.classes == folder.classes and len(hub) == len(folder)
        assert _by_label(hub) == _by_label(folder)
    with pytest.raises(UserError, match="cannot read the Hugging Face dataset"):
        build_dataset(f"hfds/{tmp_path / 'nothing_here'}", "train", CIFAR10_DATA_CONFIG)
