"""tools/train_folder_reference.py on a tiny synthetic image folder: the per-epoch state,
`--resume`, and `--restart` (a new learning-rate cycle that keeps the weights, the optimiser's
moments and the curve)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_folder_reference as trainer  # noqa: E402

TINY = ["--embed-dim", "8", "--depths", "1", "1", "--heads", "1", "2", "--window", "4", "--patch", "2",
        "--batch-size", "8", "--steps-per-epoch", "2", "--warmup-epochs", "0.5", "--threads", "1"]


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """Two classes of random 32 x 32 RGB images in train/ (26 each) and test/ (3 each)."""
    monkeypatch.setenv("DIMAP_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, count in (("train", 26), ("test", 3)):
        for name in ("cat", "dog"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / name / f"{i}.png")
    return tmp_path


def train(folder: Path, *extra: str) -> dict:
    out = folder / "w.safetensors"
    assert trainer.main(["--data", str(folder / "data"), "--out", str(out), *TINY, *extra]) == 0
    return json.loads(out.with_suffix(".json").read_text())


def test_restart_starts_a_new_cycle_and_keeps_the_curve(folder):
    first = train(folder, "--epochs", "1", "--lr", "1e-3")
    assert first["cycle_start"] == 0 and first["note"] is None and len(first["history"]) == 1
    before = torch.load(folder / "w.state.pt", weights_only=False)

    restarted = train(folder, "--epochs", "2", "--lr", "4e-4", "--restart")
    state = torch.load(folder / "w.state.pt", weights_only=False)
    assert restarted["cycle_start"] == 1 and "warm restart" in restarted["note"]
    assert [h["epoch"] for h in restarted["history"]] == [1, 2]
    assert restarted["history"][0] == first["history"][0]
    assert state["scheduler"]["base_lrs"] == [4e-4, 4e-4]
    # The optimiser's moments were carried over, not reset: AdamW's step count continues.
    steps_before = before["optimizer"]["state"][0]["step"].item()
    assert state["optimizer"]["state"][0]["step"].item() == steps_before + 2
    assert len(restarted["earlier_runs"]) == 1 and restarted["earlier_runs"][0]["lr"] == 1e-3

    resumed = train(folder, "--epochs", "3", "--lr", "4e-4", "--resume")
    assert resumed["cycle_start"] == 1 and len(resumed["history"]) == 3
