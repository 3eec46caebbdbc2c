"""The wheel: what it ships, and that an installed copy runs (part of `make test`, so CI runs it).

The wheel is built from a copy of the source tree (no build/ or egg-info left in the checkout) with
the setuptools already installed (`--no-build-isolation`, nothing downloaded). It is installed
into a fresh virtual environment without pip (`pip --python`), whose site-packages gets a .pth
line naming this interpreter's site-packages for the dependencies (torch, timm, ...). Paths in a
.pth file are added without running the .pth files found there, so the editable install's finder
hook of a development environment does not load, and `dimap_struct` resolves to the wheel's copy,
which the test checks before it runs the installed `dimap-compress` console script.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"reference.safetensors", "reference.json", "reference_cifar10.safetensors", "reference_cifar10.json"}
"""The weight files the package ships: the two current reference models and their recipes."""
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis", "*.onnx", "*.onnx.data", ".whl", ".gl")

pytestmark = pytest.mark.packaging


def _run(command: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=SKIP)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
          "-w", str(tmp / "dist"), str(source)], cwd=tmp, timeout=180)
    (found,) = (tmp / "dist").glob("dimap_struct-*.whl")
    return found


def test_wheel_holds_the_package_and_the_current_weights_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    size_mb = wheel.stat().st_size / 2**20
    print(f"\n{wheel.name}: {size_mb:.1f} MiB, {len(names)} files")
    summary = f"{wheel.name} ({size_mb:.1f} MiB): {len(names)} files"
    top = {n.split("/")[0] for n in names}
    assert top == {"dimap_struct", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, \
        f"{summary}; top-level entries {sorted(top)}"
    for module in ("dimap_struct/__init__.py", "dimap_struct/options.py", "dimap_struct/cli/compress.py",
                   "dimap_struct/cli/launch.py", "dimap_struct/models/reference.py"):
        assert module in names, f"{summary}; {module} missing"
    weights = {n.rsplit("/", 1)[1] for n in names if n.startswith("dimap_struct/models/weights/")}
    assert weights == WEIGHTS, f"{summary}; weights {sorted(weights)}"
    assert not [n for n in names if "_v1" in n or n.startswith(("tests/", "benchmarks/"))], summary
    assert size_mb < 20, f"{summary}: larger than the package and its two reference models"


def test_installed_wheel_runs_dimap_compress(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # the dependencies
    (site / "dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
          str(wheel)], cwd=tmp_path)

    where = _run([str(python), "-c", "import dimap_struct; print(dimap_struct.__file__)"], cwd=tmp_path).stdout
    assert Path(where.strip()).is_relative_to(site), f"dimap_struct imported from {where.strip()}, not the wheel's copy"

    out = tmp_path / "x.onnx"
    _run([str(venv / "bin" / "dimap-compress"), "reference", "--flops", "0.5", "-o", out.name, "--quiet"],
         cwd=tmp_path, timeout=180)
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_every_module_compiles_without_a_warning():
    """An invalid escape in a docstring warns at compile time (a SyntaxWarning on stderr from
    Python 3.12) wherever byte code is not cached, e.g. under PYTHONDONTWRITEBYTECODE."""
    import warnings

    for path in sorted((ROOT / "dimap_struct").rglob("*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(), str(path), "exec")
