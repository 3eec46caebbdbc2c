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

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
pytestmark = pytest.mark.skipif(not (CIFAR / "test").is_dir(), reason="needs ../shared/data/cifar10")
PER_CLASS = {"train": 3, "test": 2}


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    """3 train and 2 test photos of each class, in CIFAR-10's layout."""
    root = tmp_path_factory.mktemp("cifar_few")
    for split, count in PER_CLASS.items():
        for folder in sorted((CIFAR / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root


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
