"""The export's failure paths: a parity failure publishes nothing, and a failing onnxslim falls
back to the plain graph (still checked and parity-tested)."""
import pytest

import dimap_struct
from dimap_struct.deploy import export
from dimap_struct.deploy.onnx_file import read_report


def test_parity_failure_raises_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "onnx_parity", lambda path, model, inputs: 0.5)
    out = tmp_path / "m.onnx"
    with pytest.raises(export.ParityError, match="differs from PyTorch by 0.5"):
        dimap_struct.compress("reference", 0.5, output=out)
    assert list(tmp_path.iterdir()) == []  # neither the ONNX file, nor its report, nor a temporary


def test_parity_nan_counts_as_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "onnx_parity", lambda path, model, inputs: float("nan"))
    with pytest.raises(export.ParityError):
        dimap_struct.compress("reference", 0.5, output=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnxslim_failure_keeps_the_plain_export(tmp_path, monkeypatch):
    import onnxslim

    calls = []

    def broken(proto):
        calls.append(1)
        raise RuntimeError("onnxslim broke")

    monkeypatch.setattr(onnxslim, "slim", broken)
    out = tmp_path / "m.onnx"
    result = dimap_struct.compress("reference", 0.5, output=out)
    assert calls, "the export did not try onnxslim"
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert result.report.onnx.parity_max_abs_diff <= export.PARITY_TOLERANCE
    assert read_report(out).achieved.ratio == result.report.achieved.ratio
