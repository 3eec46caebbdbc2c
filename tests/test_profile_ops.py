"""benchmarks/profile_ops.py: kernel time by op type from onnxruntime's profiler, per run."""
import json
import sys
from pathlib import Path

import torch

from benchmarks import profile_ops


def _export(path: Path, width: int) -> Path:
    net = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.GELU(), torch.nn.Linear(width, 4)).eval()
    torch.onnx.export(net, (torch.zeros(1, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    return path


def test_op_times_split_per_run_and_sum_to_the_total(tmp_path):
    wide = _export(tmp_path / "wide.onnx", 256)
    result = profile_ops.op_times(wide, batch=3, threads=1, runs=5, warmup=2)
    assert result["total_ms"] > 0 and result["kernels"] >= 3
    assert {"Gemm"} <= set(result["ops"]) or {"MatMul"} <= set(result["ops"])
    # The medians per op type need not add up to the median total exactly, but they are of its order.
    assert 0.5 < sum(result["ops"].values()) / result["total_ms"] < 2.0


def test_cli_writes_the_table_with_ratios_against_the_first_file(tmp_path, capsys):
    wide, narrow = _export(tmp_path / "wide.onnx", 256), _export(tmp_path / "narrow.onnx", 32)
    assert profile_ops.main([str(wide), str(narrow), "--runs", "4", "--threads", "1",
                             "--out", str(tmp_path / "p")]) == 0
    md = (tmp_path / "p.md").read_text()
    assert "ratio narrow.onnx" in md and "**total kernel time**" in md
    saved = json.loads((tmp_path / "p.json").read_text())
    assert len(saved["results"]) == 2 and saved["batch"] == 1
    assert profile_ops.main([str(tmp_path / "missing.onnx")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_text("not onnx")
    assert profile_ops.main([str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read ONNX model" in err[0]


def test_split_runs_drops_the_warm_up_and_kernels_outside_every_run():
    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def kernel(ts, op, dur):
        return {"cat": "Node", "name": f"{op}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op, "provider": "CPUExecutionProvider"}}

    events = [run(0, 100), kernel(10, "MatMul", 50),                                   # warm-up
              run(200, 100), kernel(210, "MatMul", 30), kernel(250, "Softmax", 20),
              {"cat": "Node", "name": "MatMul_fence_before", "ts": 215, "dur": 5, "args": {"op_name": "MatMul"}},
              kernel(350, "MatMul", 99),                                                # between runs
              run(400, 100), kernel(410, "MatMul", 40)]
    per_run, kernels, spans = profile_ops.split_runs(events, warmup=1)
    assert spans == [(200, 300), (400, 500)]
    assert per_run == [{"MatMul": 0.03, "Softmax": 0.02}, {"MatMul": 0.04}] and kernels == [2, 1]
