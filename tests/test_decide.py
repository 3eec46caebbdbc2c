"""The decision rule of docs/method.md section 4, as benchmarks/decide.py applies it."""
import json
import random
import sys

import pytest

from benchmarks import decide


def test_ranks_match_the_counting_definition():
    rng = random.Random(0)
    for _ in range(200):
        values = {f"r{i}": rng.choice([90.0, 91.5, 92.0, 95.25]) for i in range(rng.randint(1, 8))}
        got = decide.ranks(values)
        for k, v in values.items():
            higher = sum(w > v for w in values.values())
            equal = sum(w == v for w in values.values())
            assert got[k] == pytest.approx(1 + higher + (equal - 1) / 2)


def _result(model, table):
    return {"meta": {"model": model},
            "summary": [{"criterion": c, "ratio": r, "zero_shot": z, "finetuned": f}
                        for (c, r), (z, f) in table.items()]}


def test_mean_rank_decides_and_ties_go_to_the_higher_mean_top1():
    a = _result("m1", {("x", 0.5): (90, 95), ("y", 0.5): (91, 94), ("z", 0.5): (50, 60)})
    b = _result("m2", {("x", 0.5): (80, 70), ("y", 0.5): (70, 79), ("z", 0.5): (10, 10)})
    out = decide.decide([a, b], candidates=("x", "y", "z"))
    assert out["mean_rank"] == {"x": 1.5, "y": 1.5, "z": 3.0}
    assert out["mean_top1"]["x"] == 83.75 and out["mean_top1"]["y"] == 83.5
    assert out["order"] == ["x", "y", "z"]
    assert len(out["cells"]) == 4


def test_a_missing_rule_is_refused():
    a = _result("m1", {("x", 0.5): (90, 95)})
    with pytest.raises(SystemExit, match="no result for y"):
        decide.decide([a], candidates=("x", "y"))


def _speed(table):
    """A speed_by_criterion.py result: {model: {criterion: batch-1 efficiency}}."""
    return {"models": {m: {"rows": [{"model": f"{m}_{c}.onnx", "batch": b, "efficiency": e if b == 1 else 9.0}
                                    for c, e in row.items() for b in (1, 8)]} for m, row in table.items()}}


def test_efficiency_is_the_median_over_models_at_batch_1():
    speed = _speed({"swin_t": {"x": 0.70, "y": 0.9}, "swin_s": {"x": 0.85, "y": 0.5},
                    "swin_b": {"x": 0.81, "y": 0.79}})
    assert decide.efficiencies(speed, ("x", "y")) == {"x": 0.81, "y": 0.79}
    with pytest.raises(SystemExit, match="no batch-1 efficiency for z"):
        decide.efficiencies(speed, ("x", "z"))
    del speed["models"]["swin_b"]
    with pytest.raises(SystemExit, match="needs swin_t, swin_s, swin_b"):
        decide.efficiencies(speed, ("x",))


def test_the_speed_floor_removes_rules_before_ranking(tmp_path, monkeypatch):
    a = _result("m1", {("x", 0.5): (90, 95), ("y", 0.5): (91, 94), ("z", 0.5): (50, 60)})
    acc, speed = tmp_path / "a.json", tmp_path / "s.json"
    acc.write_text(json.dumps(a))
    speed.write_text(json.dumps(_speed({m: {"x": 0.7, "y": 0.9, "z": 1.0} for m in decide.SPEED_MODELS})))
    monkeypatch.setattr(decide, "CANDIDATES", ("x", "y", "z"))
    monkeypatch.setattr(sys, "argv", ["decide.py", "--results", str(acc), "--speed", str(speed),
                                      "--out", str(tmp_path / "d")])
    decide.main()
    out = json.loads((tmp_path / "d.json").read_text())
    assert out["winner"] == "y" and out["speed"]["order"] == ["y", "z"]
    assert out["order"] == ["x", "y", "z"], "the table keeps every rule's ranks among all"
    assert out["speed"]["mean_rank"] == {"y": 1.0, "z": 2.0}
    assert out["speed"]["efficiency"] == {"x": 0.7, "y": 0.9, "z": 1.0}
    assert "| x | 0.70 | - |" in (tmp_path / "d.md").read_text()
