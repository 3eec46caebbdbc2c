"""Where the tests find the project's real data (read in place, never copied)."""
from pathlib import Path

from dimap_struct.cli.common import default_data


def mnist_dir() -> Path | None:
    """The MNIST directory the CLIs default to ($DIMAP_DATA or ../shared/data/mnist), if present."""
    path = Path(default_data(None))
    return path if (path / "t10k-images-idx3-ubyte.gz").is_file() or (path / "t10k-images-idx3-ubyte").is_file() \
        else None
