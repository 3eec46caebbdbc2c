"""Where the tests find the project's real data (read in place, never copied)."""
import os
from pathlib import Path

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
"""The project's CIFAR-10 in ImageFolder layout (train/ and test/)."""


def mnist_dir() -> Path | None:
    """The MNIST directory in $DIMAP_DATA (conftest.py sets it to ../shared/data/mnist when that
    exists), if it holds MNIST's test images."""
    value = os.environ.get("DIMAP_DATA")
    if not value:
        return None
    path = Path(value)
    return path if (path / "t10k-images-idx3-ubyte.gz").is_file() or (path / "t10k-images-idx3-ubyte").is_file() \
        else None
