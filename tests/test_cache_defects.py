"""Issue 27, defects #10, #14 and #16: a damaged latency cache entry is measured again and said
so; a latency cache that cannot be written is skipped with one warning; dimap-bench refuses a
batch that cannot fit in memory before timing anything.

Latency timing is replaced by a synthetic cost (parameters of the timed module), so the probe's
own code runs in a second, and the numbers are the same every time."""
import errno
import hashlib
import json
import math
import pathlib
import time

import numpy as np
import pytest
import torch

import dimap_struct
from dimap_struct.cli import bench as bench_cli, compress as compress_cli
from dimap_struct.deploy import bench, latency_probe
from dimap_struct.errors import UserError
from dimap_struct.prune.latency import LatencyModel, StageTable, with_fixed_part


def _synthetic_ms(modules, shape, threads, **kw):
    return [0.05 + 1e-4 * sum(p.numel() for p in latency_probe.built(module).parameters()) for module in modules]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty DIMAP_CACHE and synthetic timing; yields the cache root."""
    monkeypatch.setenv("DIMAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(latency_probe, "_time_modules", _synthetic_ms)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def reference():
    from dimap_struct.models import load_model

    return load_model("reference")


def _probe(loaded):
    return latency_probe.load_or_measure(loaded.model.eval(), loaded.adapter,
                                         tuple(loaded.data_config["input_size"]), 1, 2, family=loaded.adapter.family)


def _entry(cache) -> pathlib.Path:
    (path,) = (cache / "latency").glob("*.json")
    return path


def _edit(path: pathlib.Path, change) -> None:
    """Apply `change` to every dict of the entry, then store the entry back as a careless tool would,
    with its checksum as it was (whatever the entry's layout)."""
    data = json.loads(path.read_text())

    def walk(node):
        if isinstance(node, dict):
            change(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    path.write_text(json.dumps(data))


def _nan_coefficients(node: dict) -> None:
    if "heads_ms" in node:
        node["heads_ms"] = [float("nan")] * len(node["heads_ms"])


# --- #10: damaged cache entries ----------------------------------------------------------------

def test_nan_coefficients_in_the_cache_are_measured_again_and_reported(cache, capsys):
    """The issue's case: valid JSON, right key, NaN coefficients. Before: exit 0, predicted_ratio
    NaN, the model cut to 0.167 of its MACs, no word."""
    first = dimap_struct.compress("reference", latency=0.5, latency_checks=0).report.latency
    assert first["model_source"] == "measured"
    _edit(_entry(cache), _nan_coefficients)
    capsys.readouterr()
    assert compress_cli.main(["reference", "--latency", "0.5", "--latency-checks", "0", "--json"]) == 0
    out, err = capsys.readouterr()
    latency = json.loads(out)["latency"]
    assert math.isfinite(latency["predicted_ratio"]) and abs(latency["predicted_ratio"] - 0.5) <= 0.01
    assert latency["predicted_ms"] == pytest.approx(first["predicted_ms"])
    assert latency["model_source"].startswith("measured") and "damaged" in latency["model_source"]
    assert "damaged" in err and len(err.strip().splitlines()) == 1
    # measured again means cached again: the next run reads a sound entry
    assert dimap_struct.compress("reference", latency=0.5, latency_checks=0).report.latency["model_source"] == "cache"


def test_an_entry_edited_behind_its_checksum_is_measured_again(cache, reference, capsys):
    """A plausible, finite number changed by hand: only the checksum can tell."""
    measured, source = _probe(reference)
    assert source == "measured"
    _edit(_entry(cache), lambda node: node.update(dense_ms=10 * node["dense_ms"]) if "dense_ms" in node else None)
    again, source = _probe(reference)
    assert source.startswith("measured") and "damaged" in source
    assert again.dense_ms == pytest.approx(measured.dense_ms)
    assert _probe(reference)[1] == "cache"


def test_an_entry_for_another_key_is_measured_again(cache, reference, capsys):
    """A sound entry (checksum recomputed) stored under the name of a key it was not made for."""
    _probe(reference)
    path = _entry(cache)

    def other_key(node):
        if "threads" in node and "machine" in node:
            node["threads"] = 64

    _edit(path, other_key)
    data = json.loads(path.read_text())
    sums = [k for k, v in data.items() if isinstance(v, str) and len(v) == 64]
    for name in sums:  # whatever the layout, re-sign every payload beside its checksum
        payload = next(v for k, v in data.items() if isinstance(v, dict))
        data[name] = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    path.write_text(json.dumps(data))
    model, source = _probe(reference)
    assert source.startswith("measured") and "damaged" in source
    assert model.key["threads"] == 2


def _sound() -> dict:
    stages = [StageTable([0.0, 0.2, 0.3], [0, 4, 8], [0.0, 0.1, 0.15], 16) for _ in range(2)]
    return with_fixed_part({"threads": 2}, stages, [0, 1], [16, 32], [2, 2], [64, 128], 5.0).to_dict()


@pytest.mark.parametrize("damage", [
    lambda d: d["stages"][0]["heads_ms"].__setitem__(2, float("nan")),
    lambda d: d["stages"][1]["mlp_ms"].__setitem__(2, float("inf")),
    lambda d: d["stages"][0]["mlp_ms"].__setitem__(1, -0.5),
    lambda d: d["stages"][0]["heads_ms"].__setitem__(2, 0.1),
    lambda d: d.__setitem__("dense_ms", 0.0),
    lambda d: d.__setitem__("unpruned_ms", float("-inf")),
    lambda d: d.__setitem__("fixed_ms", float("nan")),
    lambda d: d.__setitem__("block_stages", [0, 5]),
    lambda d: d.__setitem__("stage_widths", [16, 0]),
    lambda d: d["stages"][0].__setitem__("mlp_widths", [0, 4]),
    lambda d: d["stages"][1].__setitem__("mlp_widths", [1, 4, 8]),
    lambda d: d["stages"][1]["heads_ms"].__setitem__(0, 0.05),
], ids=["nan-timing", "inf-timing", "negative-timing", "falling-timing", "zero-dense", "inf-unpruned",
        "nan-fixed", "stage-out-of-range", "zero-width", "grid-without-timing", "grid-not-from-0", "removed-not-free"])
def test_a_latency_model_with_impossible_numbers_is_refused(damage):
    data = _sound()
    assert LatencyModel.from_dict(data).unpruned_ms == pytest.approx(5.0)
    damage(data)
    with pytest.raises(ValueError):
        LatencyModel.from_dict(data)


# --- #16: a cache that cannot be written ----------------------------------------------------------

def _one_warning(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: latency cache") and "carrying on without it" in lines[0]
    return lines[0]


def test_a_cache_under_a_file_is_skipped_with_one_warning(tmp_path, monkeypatch, capsys):
    """DIMAP_CACHE names a regular file: the cache directory cannot be made. Before: exit 1 after
    the timing."""
    monkeypatch.setattr(latency_probe, "_time_modules", _synthetic_ms)
    (tmp_path / "afile").write_text("not a directory")
    monkeypatch.setenv("DIMAP_CACHE", str(tmp_path / "afile"))
    for _ in range(2):  # the second run reads under the file too
        assert compress_cli.main(["reference", "--latency", "0.5", "--latency-checks", "0", "--json"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["latency"]["model_source"] == "measured"
        assert "not writable" in _one_warning(err)
    assert (tmp_path / "afile").read_text() == "not a directory"


_real_mkdir, _real_write = pathlib.Path.mkdir, pathlib.Path.write_text


def _failing(name, error):
    def fail(self, *args, **kwargs):
        if "latency" in self.parts or self.name.startswith(".dimap-"):
            raise error
        return (_real_mkdir if name == "mkdir" else _real_write)(self, *args, **kwargs)

    return fail


@pytest.mark.parametrize("name, error", [
    ("mkdir", PermissionError(errno.EACCES, "Permission denied")),
    ("mkdir", OSError(errno.EROFS, "Read-only file system")),
    ("write_text", OSError(errno.ENOSPC, "No space left on device")),
    ("write_text", PermissionError(errno.EACCES, "Permission denied")),
], ids=["mkdir-denied", "read-only", "disk-full", "write-denied"])
def test_a_cache_that_cannot_be_written_is_skipped_with_one_warning(cache, reference, monkeypatch, capsys, name,
                                                                     error):
    """Before: the OSError (exit 1) or a UserError from the atomic write (exit 2), after the timing."""
    monkeypatch.setattr(pathlib.Path, name, _failing(name, error))
    model, source = _probe(reference)
    assert source == "measured" and math.isfinite(model.unpruned_ms)
    assert error.strerror in _one_warning(capsys.readouterr().err)
    assert not list(cache.rglob("*.json"))


# --- #14: a batch that cannot fit in memory ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> pathlib.Path:
    from dimap_struct.pipeline import compress

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    compress("swin_tiny_patch4_window7_224", 0.5, pretrained=False, output=str(path),
             model_kwargs={"in_chans": 1, "img_size": 56, "window_size": 7, "embed_dim": 24, "num_classes": 3,
                           "depths": (1, 1, 1, 1), "num_heads": (2, 2, 2, 2)})
    return path


ABSURD = 10 ** 9  # 12.5 TB of 1x56x56 float inputs alone


def test_a_batch_that_cannot_fit_is_refused_before_timing(tiny_onnx):
    """Before: numpy's MemoryError here; at a batch numpy can still allocate, the OOM killer."""
    runs = []
    start = time.perf_counter()
    with pytest.raises(UserError) as caught:
        bench.benchmark([tiny_onnx], batches=(1, ABSURD), warmup=0, min_iters=1, min_time=0, on_run=runs.append)
    assert time.perf_counter() - start < 20 and not runs
    message = str(caught.value)
    assert f"--batch {ABSURD} needs at least" in message and "tiny.onnx" in message and "available" in message
    assert "\n" not in message


def test_the_cli_refuses_a_batch_that_cannot_fit_in_one_line(tiny_onnx, capsys):
    assert bench_cli.main([str(tiny_onnx), "--batch", str(ABSURD)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dimap-bench: error: --batch 1000000000 needs at least")


def test_a_batch_that_fits_still_runs(tiny_onnx):
    result = bench.benchmark([tiny_onnx], batches=(1, 8), warmup=0, min_iters=1, min_time=0)
    assert [row["batch"] for row in result["rows"]] == [1, 8]


class _Known(torch.nn.Module):
    """Largest tensor: the 64x20x20 convolution output (25.6 KB an image), beside a 3x20x20 input."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.head = torch.nn.Linear(256, 5)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


def _brute_force_bytes_per_image(path: pathlib.Path, shape) -> int:
    """Every tensor the graph makes, run at batch 1 in onnxruntime: input + the largest one."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, *shape), np.float32)
    return x.nbytes + max(np.asarray(t).nbytes for t in session.run(None, {"input": x}))


def test_the_memory_estimate_matches_a_brute_force_count(tmp_path):
    path = tmp_path / "known.onnx"
    with torch.no_grad():
        torch.onnx.export(_Known().eval(), (torch.zeros(1, 3, 20, 20),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    expected = _brute_force_bytes_per_image(path, (3, 20, 20))
    assert expected == 4 * (3 * 20 * 20 + 64 * 20 * 20)
    assert bench.bytes_per_image(path, (3, 20, 20)) == expected


def test_a_disturbed_timing_of_the_whole_model_is_taken_again(cache, reference, monkeypatch):
    """The unpruned model timed 50x slower than its blocks say (as when other work took the cores
    for that second): the blocks' scale comes out implausible, so the whole model and its skeleton
    are timed again, and the plausible timing is the one kept."""
    wholes = []

    def disturbed_first(modules, shape, threads, **kw):
        times = _synthetic_ms(modules, shape, threads, **kw)
        if kw.get("seconds_each") == 1.0:  # the unpruned model and its skeleton
            wholes.append(times)
            if len(wholes) == 1:
                times = [times[1] + 50 * (times[0] - times[1]), times[1]]
        return times

    monkeypatch.setattr(latency_probe, "_time_modules", disturbed_first)
    model, source = _probe(reference)
    assert source == "measured" and len(wholes) == 2
    assert latency_probe.PLAUSIBLE_SCALE[0] <= model.scale <= latency_probe.PLAUSIBLE_SCALE[1]
    assert model.dense_ms == pytest.approx(wholes[1][0])
