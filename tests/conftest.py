import os
from pathlib import Path

import pytest

from shared_data import CIFAR


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers) each worker keeps to one intra-op thread,
    so that two workers do not ask for four threads on a 2-core machine. xdist's controller runs no
    test, so it does not import torch at all: seconds of CPU taken from its workers as they start."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if getattr(config.option, "numprocesses", None) and not worker:
        return
    import torch

    torch.set_num_threads(1 if worker else min(2, os.cpu_count() or 1))

# The commands read data from --data or $DIMAP_DATA only; the tests use the project's shared
# MNIST beside the checkout (../shared/data/mnist) when it is there and DIMAP_DATA is not set.
SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
if SHARED_MNIST.is_dir():
    os.environ.setdefault("DIMAP_DATA", str(SHARED_MNIST))

MODELS = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "swin_b384": "swin_base_patch4_window12_384",
}


@pytest.fixture(scope="session")
def random_model():
    """Build (and cache for the session) a timm Swin with seeded random weights; callers must
    not modify it (compress() copies its input)."""
    import timm
    import torch

    cache = {}

    def get(key: str):
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = timm.create_model(MODELS.get(key, key), pretrained=False).eval()
        return cache[key]

    return get


@pytest.fixture(scope="session")
def narrow_swin():
    """swin_t's layout and head counts, narrow and shallow (small_models.py), seeded; callers
    must not modify it. For tests of structure and selection rules, which the released width does
    not change."""
    from small_models import tiny_heads

    return tiny_heads()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests (use with pytest.mark.usefixtures): with another
    job on this 2-core machine, two threads made a small model's forward pass far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def few(tmp_path_factory):
    """3 train and 2 test CIFAR-10 photos of each class, copied into CIFAR-10's layout (skips the
    test without ../shared/data/cifar10)."""
    import shutil

    if not (CIFAR / "test").is_dir():
        pytest.skip("needs ../shared/data/cifar10")
    root = tmp_path_factory.mktemp("cifar_few")
    for split, count in {"train": 3, "test": 2}.items():
        for folder in sorted((CIFAR / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root
