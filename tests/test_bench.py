"""dimap-bench: fields and arithmetic of the result, interleaved schedule, missing metadata, errors.

Tiny conv nets keep it fast; no absolute timing is asserted."""
import json
import warnings

import onnx
import pytest
import torch
from torch import nn

from dimap_struct.cli import bench as cli_bench
from dimap_struct.deploy import bench
from dimap_struct.report.schema import Achieved, Architecture, Counts, Report, Source, Target

FAST = dict(warmup=0.0, min_iters=5, min_time=0.01)
CLI_FAST = ["--warmup", "0", "--min-iters", "5", "--min-time", "0.01", "--quiet"]
WIDE_MACS, NARROW_MACS = 4_000_000, 1_000_000


def _report(macs: int, size: int = 16, granularity: str = "structured", original: int = WIDE_MACS) -> Report:
    """A minimal stored report of a toy model: `macs` pruned MACs of `original` (weight
    granularity: effective MACs of a file that still runs at `original`)."""
    return Report(
        package_version="0", granularity=granularity,
        source=Source(model="toy", family="toy", weights="random init (seed 0)", random_init=True),
        data_config={"input_size": [3, size, size], "mean": [0.5] * 3, "std": [0.5] * 3}, recipe={},
        architecture=Architecture("toy"), criterion="dimap", criterion_summary="", score_mode=None,
        target=Target(), achieved=Achieved(macs=macs, ratio=macs / original, params=0, params_ratio=0.0),
        original=Counts(macs=original, params=0), pruned=Counts(macs=macs, params=0),
        runtime_macs=original if granularity == "weight" else macs,
        blocks=[], residual=None, selection={}, verification={}, notes=[])


def _export(path, width: int, size: int = 16, macs: int | None = None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    if macs is not None:
        proto = onnx.load(str(path))
        meta = _report(macs, size).metadata()
        proto.metadata_props.append(onnx.StringStringEntryProto(key="dimap_struct", value=json.dumps(meta)))
        onnx.save(proto, str(path))
    return str(path)


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return {"wide": _export(d / "wide.onnx", 32, macs=WIDE_MACS),
            "narrow": _export(d / "narrow.onnx", 8, macs=NARROW_MACS),
            "plain": _export(d / "plain.onnx", 8),
            "big_input": _export(d / "big.onnx", 8, size=20, macs=NARROW_MACS)}


def test_result_fields_and_arithmetic(toys):
    result = bench.benchmark([toys["wide"], toys["narrow"]], batches=(1, 4), threads=1, **FAST)
    for key in ("date", "machine", "onnxruntime", "provider", "threads", "batches", "iterations", "rows", "notes"):
        assert key in result
    assert result["input_shape"] == [3, 16, 16] and result["batches"] == [1, 4] and result["threads"] == 1
    assert result["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert [(r["batch"], r["model"]) for r in result["rows"]] == [
        (1, "wide.onnx"), (1, "narrow.onnx"), (4, "wide.onnx"), (4, "narrow.onnx")]
    for batch in (1, 4):
        first, other = (r for r in result["rows"] if r["batch"] == batch)
        for r in (first, other):
            assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
            assert r["images_per_s"] == pytest.approx(batch / r["median_ms"] * 1e3)
            assert r["iterations"] == result["iterations"][str(batch)] >= 5
        assert first["speedup"] == first["ideal_speedup"] == first["efficiency"] == 1.0
        assert other["speedup"] == pytest.approx(first["median_ms"] / other["median_ms"])
        assert other["ideal_speedup"] == pytest.approx(WIDE_MACS / NARROW_MACS)
        assert other["efficiency"] == pytest.approx(other["speedup"] / other["ideal_speedup"])
    assert result["notes"] == []
    json.dumps(result)  # serialisable as it is


def test_models_are_interleaved(toys):
    runs = []
    bench.benchmark([toys["wide"], toys["narrow"], toys["plain"]], batches=(2,), threads=1,
                    on_run=runs.append, **FAST)
    timed = [r.index for r in runs if r.phase == "measure"]
    assert len(timed) % 3 == 0 and timed == [0, 1, 2] * (len(timed) // 3)
    warm = [r.index for r in runs if r.phase == "warmup"]
    assert warm == sorted(warm) and set(warm) == {0, 1, 2}  # warm-up: each model on its own, before timing
    assert runs.index(next(r for r in runs if r.phase == "measure")) == len(warm)
    assert runs[-1].done == 1.0


def test_model_without_metadata(toys):
    result = bench.benchmark([toys["wide"], toys["plain"]], batches=(1,), threads=1, **FAST)
    plain = result["rows"][1]
    assert plain["ideal_speedup"] is None and plain["efficiency"] is None and plain["macs"] is None
    assert plain["speedup"] > 0
    assert any("plain.onnx" in n and "ideal speed-up unknown" in n for n in result["notes"])
    # without MACs for the baseline no model has an ideal speed-up
    result = bench.benchmark([toys["plain"], toys["narrow"]], batches=(1,), threads=1, **FAST)
    assert all(r["ideal_speedup"] is None for r in result["rows"])
    assert any("baseline" in n for n in result["notes"])


def test_macs_from_metadata():
    assert bench.model_macs(_report(7, original=9)) == (7, None)
    macs, note = bench.model_macs(_report(3, granularity="weight", original=9))
    assert macs == 9 and "dense" in note  # zeros still cost MACs in a dense file
    macs, note = bench.model_macs(None)
    assert macs is None and "ideal speed-up unknown" in note


def test_benchmark_torch_interleaves():
    runs = []
    modules = {"a": nn.Linear(8, 8), "b": nn.Linear(8, 2)}
    result = bench.benchmark_torch(modules, (8,), batches=(3,), threads=1, macs={"a": 64, "b": 16},
                                   on_run=runs.append, **FAST)
    a, b = result["rows"]
    assert a["iterations"] == b["iterations"] >= 5
    assert b["ideal_speedup"] == pytest.approx(4.0)
    assert b["efficiency"] == pytest.approx(b["speedup"] / 4.0)
    timed = [r.index for r in runs if r.phase == "measure"]
    assert timed == [0, 1] * (len(timed) // 2)


def test_cli_outputs(toys, tmp_path, capsys):
    md, out, png = tmp_path / "b.md", tmp_path / "b.json", tmp_path / "b.png"
    code = cli_bench.main([toys["wide"], toys["narrow"], "--batch", "1", "2", "--threads", "1", "--json",
                           "--md", str(md), "--json-out", str(out), "--plot", str(png), *CLI_FAST])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    printed, written = json.loads(stdout), json.loads(out.read_text())
    assert printed["rows"] == written["rows"] and written["batches"] == [1, 2]
    for key in ("onnxruntime", "provider", "threads", "iterations", "machine", "date"):
        assert key in written
    assert "cpu_count" in written["machine"] and "platform" in written["machine"]
    text = md.read_text()
    assert "| narrow.onnx | 2 |" in text and "efficiency" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.md", "b.png"]  # no temporary left
    # existing outputs are kept without --force
    code = cli_bench.main([toys["wide"], "--md", str(md), *CLI_FAST])
    _one_line_error(code, capsys.readouterr().err, "--force")


def test_cli_table(toys, capsys):
    code = cli_bench.main([toys["wide"], toys["plain"], "--batch", "1", "--threads", "1", *CLI_FAST])
    out, _ = capsys.readouterr()
    assert code == 0
    for header in ("median ms", "p10 ms", "p90 ms", "img/s", "speed-up", "ideal", "efficiency"):
        assert header in out
    assert "plain.onnx" in out and "ideal speed-up unknown" in out


def _one_line_error(code, err, needle):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err


def test_cli_errors(toys, tmp_path, capsys):
    def run(*args):
        code = cli_bench.main([*args, *CLI_FAST])
        return code, capsys.readouterr().err

    _one_line_error(*run(str(tmp_path / "missing.onnx")), "model file not found")
    junk = tmp_path / "x.onnx"
    junk.write_text("not a model\n")
    _one_line_error(*run(toys["wide"], str(junk)), "cannot read ONNX model")
    code, err = run(toys["wide"], toys["big_input"])
    _one_line_error(code, err, "conflicting input shapes: wide.onnx expects 3x16x16, big.onnx 3x20x20")
    _one_line_error(*run(toys["plain"], "--torch"), "records no architecture")  # no stored report
    _one_line_error(*run(toys["wide"], "--batch", "0"), "--batch must be integers >= 1")
    from dimap_struct import UserError

    with pytest.raises(UserError, match="batch sizes must be positive"):  # the library checks it too
        bench.benchmark([toys["wide"]], batches=(0,), threads=1, **FAST)
    _one_line_error(*run(toys["wide"], toys["plain"], "--plot", str(tmp_path / "p.png")), "has none")
    assert not (tmp_path / "p.png").exists()


def test_cli_torch_times_the_rebuilt_modules(tmp_path, capsys):
    """--torch rebuilds each exported model from its metadata: same structure (parameter count,
    MACs) as the file, timed in eager PyTorch in a second table."""
    import dimap_struct
    from dimap_struct.prune.replay import build_architecture
    from dimap_struct.deploy.onnx_file import read_report

    dense, half = tmp_path / "dense.onnx", tmp_path / "half.onnx"
    dimap_struct.compress("reference", 1.0, output=dense)
    pruned = dimap_struct.compress("reference", 0.5, output=half)
    rebuilt = build_architecture(read_report(half).architecture)
    assert sum(p.numel() for p in rebuilt.parameters()) == pruned.report.pruned.params

    code = cli_bench.main([str(dense), str(half), "--torch", "--batch", "2", "--threads", "1", "--json", *CLI_FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    torch_rows = result["torch"]["rows"]
    assert [r["model"] for r in torch_rows] == ["dense.onnx", "half.onnx"]
    assert [r["macs"] for r in torch_rows] == [r["macs"] for r in result["rows"]]
    assert torch_rows[1]["ideal_speedup"] == pytest.approx(torch_rows[0]["macs"] / torch_rows[1]["macs"])
    assert result["torch"]["framework"] == "pytorch eager" and result["torch"]["input_shape"] == [1, 32, 32]


def test_timed_sessions_stop_spinning_when_a_run_returns(toys):
    """Interleaved timing keeps one session per file in the process: their idle workers must not
    spin on through the next file's run (that cost swin_t about 20 ms per run at batch 1)."""
    from dimap_struct.deploy.onnx_file import open_session

    tuned = open_session(toys["wide"], 2, tuned=True).get_session_options()
    assert tuned.get_session_config_entry("session.force_spinning_stop") == "1"
    assert tuned.intra_op_num_threads == 2 and tuned.inter_op_num_threads == 1
