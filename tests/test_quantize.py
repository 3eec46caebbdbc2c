"""INT8 export (deploy/quantize.py) and OpenVINO as a second runtime (deploy/runtimes.py).

The digits reference is quantized statically on its own calibration split and checked on
images calibration did not use; dimap-eval and dimap-bench run the INT8 file; OpenVINO agrees
with onnxruntime; a missing OpenVINO is one line."""
import json
import sys

import numpy as np
import onnx
import pytest
import torch

import dimap_struct
from dimap_struct.cli import bench, eval as eval_cli
from dimap_struct.deploy.choices import resolve_scheme
from dimap_struct.deploy.onnx_file import read_report
from dimap_struct.deploy.quantize import labelled_sample
from dimap_struct.errors import UserError
from shared_data import mnist_dir

needs_mnist = pytest.mark.skipif(mnist_dir() is None, reason="needs the shared MNIST")


@pytest.fixture(scope="module")
def int8_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "q.onnx"
    result = dimap_struct.compress("reference", 0.5, output=out, quantize="int8", calib_data=str(mnist_dir()),
                                   calib_images=128)
    return out, result


def test_scheme_resolution():
    assert resolve_scheme("int8", None) == "int8-dynamic"
    assert resolve_scheme("int8", "data") == "int8-static"
    assert resolve_scheme(None, "data") is None
    with pytest.raises(UserError, match="give --calib-data"):
        resolve_scheme("int8-static", None)


@needs_mnist
def test_calibration_and_check_images_are_disjoint():
    config = dimap_struct.load_model("reference").data_config
    a, _ = labelled_sample(mnist_dir(), config, 64, seed=0)
    b, labels = labelled_sample(mnist_dir(), config, 64, seed=0, skip=64)
    assert len(labels) == 64 and not any(torch.equal(x, y) for x in a for y in b)


@needs_mnist
def test_static_int8_is_measured_against_the_float_model(int8_reference):
    path, result = int8_reference
    q = result.report.quantization
    assert q["scheme"] == "int8-static" and q["calibration"]["images"] == 128
    assert q["calibration"]["data_sha256"]
    check = q["evaluation"]
    assert check["images"] == 128 and "not used to calibrate" in check["source"]
    assert check["agreement_top1"] >= 95.0
    assert abs(check["int8_top1"] - check["float_top1"]) <= 3.0
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    stored = read_report(path)
    assert stored.quantization["scheme"] == "int8-static"  # the metadata says what the file is
    assert json.loads(path.with_suffix(".json").read_text())["quantization"]["evaluation"] == check


@needs_mnist
def test_eval_and_bench_run_the_int8_file(int8_reference, capsys):
    path, _ = int8_reference
    assert eval_cli.main([str(path), "--data", str(mnist_dir()), "--limit", "200", "--json", "--quiet"]) == 0
    top1 = json.loads(capsys.readouterr().out)["top1"]
    assert top1 > 80.0
    assert bench.main([str(path), "--batch", "1", "--warmup", "0", "--min-time", "0", "--min-iters", "2",
                       "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"][0]["quantization"] == "int8-static"


def test_dynamic_int8_needs_no_data(tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, window_size=7, embed_dim=24,
                              depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), num_classes=5).eval()
    result = dimap_struct.compress(model, 0.5, output=tmp_path / "d.onnx", quantize="int8")
    q = result.report.quantization
    assert q["scheme"] == "int8-dynamic" and q["evaluation"] is None and q["calibration"] is None
    ops = {n.op_type for n in onnx.load(str(tmp_path / "d.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    assert not list(tmp_path.glob(".dimap-*"))


@needs_mnist
def test_openvino_agrees_with_onnxruntime(tmp_path, capsys):
    pytest.importorskip("openvino")
    out = tmp_path / "f.onnx"
    dimap_struct.compress("reference", 0.5, output=out)
    tops = []
    for runtime in ("onnxruntime", "openvino"):
        assert eval_cli.main([str(out), "--data", str(mnist_dir()), "--limit", "300", "--runtime", runtime,
                              "--json", "--quiet"]) == 0
        tops.append(json.loads(capsys.readouterr().out)["top1"])
    assert tops[0] == pytest.approx(tops[1], abs=0.5)
    assert bench.main([str(out), "--runtime", "onnxruntime", "openvino", "--batch", "1", "3", "--warmup", "0",
                       "--min-time", "0", "--min-iters", "2", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in result["rows"]] == ["f.onnx (onnxruntime)", "f.onnx (openvino)"] * 2
    assert set(result["runtimes"]) == {"onnxruntime", "openvino"}


def test_a_missing_openvino_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "f.onnx"
    out.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    code = bench.main([str(out), "--runtime", "openvino"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install" in err[0] and "openvino" in err[0]


def test_openvino_runs_the_same_numbers(tmp_path):
    pytest.importorskip("openvino")
    import timm

    from dimap_struct.deploy.runtimes import open_runner

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, window_size=7, embed_dim=24,
                              depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), num_classes=5).eval()
    dimap_struct.compress(model, 0.5, output=tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 3, 56, 56), dtype=np.float32)
    ours = [open_runner(tmp_path / "m.onnx", rt, 1)[0](x) for rt in ("onnxruntime", "openvino")]
    assert np.abs(ours[0] - ours[1]).max() <= 1e-3
