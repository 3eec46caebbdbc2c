"""dimap-eval and the reference model: accuracy on real digits, ONNX preprocessing from metadata."""
import json

import pytest
import torch

import dimap_struct
from dimap_struct.cli import eval as cli_eval
from dimap_struct.deploy.evaluate import accuracy, torch_classifier
from dimap_struct.models import load_model
from shared_data import mnist_dir

pytestmark = pytest.mark.skipif(mnist_dir() is None, reason="needs ../shared/data/mnist")


def _eval(capsys, *args):
    code = cli_eval.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_reference_reaches_97_percent(capsys):
    code, out, _ = _eval(capsys, "reference", "--json", "--quiet")
    assert code == 0
    result = json.loads(out)
    assert result["images"] == 2000 and result["split"] == "eval"
    assert result["top1"] >= 97.0


def test_pruned_onnx_evaluates_like_pytorch(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    result = dimap_struct.compress("reference", 0.5, output=out)
    loaded = load_model("reference")
    ours = accuracy(torch_classifier(result.model, loaded.data_config, "pruned"), mnist_dir())
    code, text, _ = _eval(capsys, str(out), "--data", str(mnist_dir()), "--json", "--quiet")  # the ONNX file
    assert code == 0
    theirs = json.loads(text)  # its preprocessing read from the ONNX metadata
    assert theirs["top1"] == pytest.approx(ours["top1"], abs=0.1)


def _one_line_error(code, err, needle):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err


def test_a_missing_model_file_is_named_before_a_missing_data_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("DIMAP_DATA", raising=False)
    code, _, err = _eval(capsys, str(tmp_path / "missing.onnx"), "--quiet")
    _one_line_error(code, err, "model file not found: ")  # a long path is shortened in the middle
    assert err.strip().endswith("missing.onnx"), err


def test_bad_input(capsys, tmp_path):
    code, _, err = _eval(capsys, "reference", "--data", str(tmp_path / "nowhere"), "--quiet")
    _one_line_error(code, err, "not found")
    code, _, err = _eval(capsys, str(tmp_path / "missing.onnx"), "--quiet")
    _one_line_error(code, err, "not found")
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    code, _, err = _eval(capsys, str(junk), "--quiet")
    _one_line_error(code, err, "cannot read ONNX")

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 10)),
                      (torch.zeros(1, 1, 32, 32),), str(plain), dynamo=False)
    code, _, err = _eval(capsys, str(plain), "--quiet")
    _one_line_error(code, err, "no dimap_struct metadata")


def test_class_count_mismatch(capsys, tmp_path):
    from PIL import Image

    for c in range(12):
        (tmp_path / f"class{c:02d}").mkdir()
        Image.new("L", (28, 28), color=c * 20).save(tmp_path / f"class{c:02d}" / "a.png")
    code, _, err = _eval(capsys, "reference", "--data", str(tmp_path), "--split", "all", "--quiet")
    _one_line_error(code, err, "12 classes")
