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


def test_swa_writes_the_mean_of_the_epoch_end_weights(folder, monkeypatch, capsys):
    """`--restart --swa` holds the lr constant and writes the average of its epoch-end weights:
    checked against the mean of the weights captured at each epoch's end (brute force)."""
    from safetensors.torch import load_file

    train(folder, "--epochs", "1", "--lr", "1e-3")
    ends = []
    real_top1 = trainer.top1

    def capture(model, *args, **kwargs):
        if not ends or model is not ends[-1][0]:
            ends.append((model, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return real_top1(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "top1", capture)
    swa = train(folder, "--epochs", "3", "--lr", "2e-4", "--restart", "--swa")
    state = torch.load(folder / "w.state.pt", weights_only=False)
    assert state["scheduler"]["_last_lr"] == [2e-4, 2e-4]  # constant after the warm-up
    assert [h.get("swa_holdout_top1") is not None for h in swa["history"]] == [False, True, True]
    assert "average of its 2 epoch-end weights" in swa["schedule"]
    # The training model's weights at the end of epochs 2 and 3 (the first top1 call of each epoch).
    training = [weights for model, weights in ends if model is ends[0][0]]
    written = load_file(folder / "w.safetensors")
    name = "layers.0.blocks.0.mlp.fc1.weight"
    expected = (training[-2][name] + training[-1][name]) / 2
    assert torch.allclose(written[name], expected, atol=1e-6)
    assert not torch.allclose(written[name], training[-1][name])

    with pytest.raises(SystemExit) as refused:  # argparse's usage error: exit code 2
        trainer.main(["--data", str(folder / "data"), "--out", str(folder / "x.safetensors"), *TINY, "--swa"])
    assert refused.value.code == 2
    assert "--swa averages a restarted cycle" in capsys.readouterr().err


def test_an_interrupted_swa_cycle_resumes_its_average_and_a_restart_starts_none(folder, capsys):
    """`--resume` of an SWA cycle continues its average (same weights as an uninterrupted cycle);
    `--resume --swa` of a cosine run is refused; a plain `--restart` from an SWA state is cosine."""
    from safetensors.torch import load_file

    data = ["--data", str(folder / "data"), *TINY]

    def run(out, *extra):
        assert trainer.main([*data, "--out", str(folder / out), *extra]) == 0
        return json.loads((folder / out).with_suffix(".json").read_text())

    run("a.safetensors", "--epochs", "1", "--lr", "1e-3")
    assert trainer.main([*data, "--out", str(folder / "a.safetensors"), "--epochs", "2", "--resume", "--swa"]) == 2
    assert "holds no average to continue" in capsys.readouterr().err
    (folder / "b.state.pt").write_bytes((folder / "a.state.pt").read_bytes())
    run("a.safetensors", "--epochs", "3", "--lr", "2e-4", "--restart", "--swa")
    run("b.safetensors", "--epochs", "2", "--lr", "2e-4", "--restart", "--swa")
    resumed = run("b.safetensors", "--epochs", "3", "--lr", "9e-9", "--resume")
    assert torch.load(folder / "b.state.pt", weights_only=False)["swa"]["n_averaged"].item() == 2
    assert resumed["hyper"]["swa"] is True and resumed["hyper"]["lr"] == 2e-4
    assert "average of its 2 epoch-end weights" in resumed["schedule"]
    whole, split = load_file(folder / "a.safetensors"), load_file(folder / "b.safetensors")
    assert all(torch.allclose(whole[k], split[k], atol=1e-6) for k in whole)

    cosine = run("b.safetensors", "--epochs", "4", "--lr", "1e-4", "--restart")
    assert cosine["hyper"]["swa"] is False and "cosine" in cosine["note"]
    state = torch.load(folder / "b.state.pt", weights_only=False)
    assert state["swa"] is None
    assert torch.equal(load_file(folder / "b.safetensors")["head.fc.weight"], state["model"]["head.fc.weight"])
