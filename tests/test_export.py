"""End to end through the CLI: a valid, dense ONNX at the MACs target, counted from the graph."""
import contextlib
import io
import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import dimap_struct
from dimap_struct.deploy.onnx_file import METADATA_KEY, read_report
from dimap_struct.deploy.onnx_macs import count_onnx_macs

from macs import torch_counted_macs


def _cli(*args, check=True):
    """dimap-compress ARGS through its entry point in this process (a process less to start: the
    imports alone take about 10 s here); what it wrote to stdout and stderr, and its exit code."""
    from dimap_struct.cli import compress

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = compress.main(list(args))
    proc = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "x.onnx"
    proc = _cli("swin_t", "--no-pretrained", "--flops", "0.5", "-o", str(out), "--quiet")
    return out, proc


def test_onnx_is_valid_and_runs_any_batch(exported):
    path, _ = exported
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        (logits,) = session.run(None, {"input": np.random.rand(batch, 3, 224, 224).astype(np.float32)})
        assert logits.shape == (batch, 1000) and np.isfinite(logits).all()


def test_graph_macs_are_half_of_the_original(exported, random_model):
    path, _ = exported
    pruned_macs, dense_macs = count_onnx_macs(str(path)), torch_counted_macs(random_model("swin_t"), (3, 224, 224))
    assert abs(pruned_macs / dense_macs - 0.5) <= 0.01
    meta = read_report(path)
    # the analytic counts agree with the graph and with torch's counter exactly (biases, norms
    # and softmax are MACs in none of them)
    assert meta.pruned.macs == pruned_macs
    assert meta.original.macs == dense_macs
    assert count_onnx_macs(str(path), batch=3) == 3 * pruned_macs


def test_metadata_and_report_beside(exported):
    path, proc = exported
    (stored,) = [json.loads(p.value) for p in onnx.load(str(path)).metadata_props if p.key == METADATA_KEY]
    for key in ("source", "criterion", "target", "achieved", "original", "pruned",
                "blocks", "data_config", "package_version"):
        assert key in stored, key
    assert "timings_s" not in stored and "onnx" not in stored
    meta = read_report(path)
    assert stored == meta.metadata()
    assert meta.source.model == "swin_tiny_patch4_window7_224"
    assert "random" in meta.source.weights
    assert meta.data_config["input_size"] == [3, 224, 224] and len(meta.data_config["mean"]) == 3
    assert len(meta.blocks) == 12 and all(b.kept_heads for b in meta.blocks)
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["onnx"]["parity_max_abs_diff"] <= 1e-3
    assert report["verification"]["mask_equivalence_max_abs_diff"] <= 1e-4
    assert abs(report["achieved"]["ratio"] - 0.5) <= 0.01
    assert "NOT pretrained" in proc.stdout or "not pretrained" in proc.stdout.lower()
    # no temporary files left beside the outputs
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json", "x.onnx"]


def test_json_on_stdout(tmp_path):
    proc = _cli("reference", "--flops", "0.7", "--json", "--quiet")  # the small model: stdout is the point
    report = json.loads(proc.stdout)
    assert abs(report["achieved"]["ratio"] - 0.7) <= 0.01
    assert report["original"]["macs"] > report["pruned"]["macs"]
