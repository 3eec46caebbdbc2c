"""benchmarks/speed_by_criterion.py: the summary table it builds from a benchmark result and
decide.py's accuracy cells."""
import argparse
import json
from pathlib import Path

from benchmarks import speed_by_criterion as sbc

from dimap_struct.prune.criteria import DEFAULT_RULE


def _row(model, batch, ms, efficiency=None):
    return {"model": model, "batch": batch, "median_ms": ms, "efficiency": efficiency}


def test_accuracy_columns_read_the_rule_the_default_stands_for(tmp_path):
    decision = {"mean_rank": {DEFAULT_RULE: 1.5, "l1": 4.0},
                "cells": [{"cell": "reference-cifar10 R=0.5 zero_shot", "top1": {DEFAULT_RULE: 70.0, "l1": 60.0}},
                          {"cell": "reference-cifar10 R=0.5 finetuned", "top1": {DEFAULT_RULE: 74.0, "l1": 71.0}},
                          {"cell": "reference-cifar10 R=0.8 zero_shot", "top1": {DEFAULT_RULE: 99.0}}]}
    path = tmp_path / "decision.json"
    path.write_text(json.dumps(decision))
    assert sbc.accuracy_columns(path, "dimap") == {"cifar_r050_zero_shot": 70.0, "cifar_r050_finetuned": 74.0,
                                                   "mean_rank": 1.5}
    assert sbc.accuracy_columns(path, "l1")["cifar_r050_finetuned"] == 71.0
    assert sbc.accuracy_columns(path, "l2") == {"cifar_r050_zero_shot": None, "cifar_r050_finetuned": None,
                                                "mean_rank": None}
    assert sbc.accuracy_columns(tmp_path / "missing.json", "dimap") == {}


def test_summary_reads_each_criterion_s_rows_and_the_large_versus_small_ratio():
    results = {
        "models": {"swin_t": {"rows": [_row("swin_t_dense.onnx", 1, 60.0, 1.0), _row("swin_t_a.onnx", 1, 40.0, 0.75),
                                       _row("swin_t_b.onnx", 1, 30.0, 1.0)]}},
        "large_vs_small": {"rows": [_row("swin_t_dense.onnx", 1, 60.0), _row("swin_s_to_t_a.onnx", 1, 72.0),
                                    _row("swin_s_to_t_b.onnx", 1, 54.0)]},
        "accuracy": {"a": {"cifar_r050_zero_shot": 70.0, "cifar_r050_finetuned": 74.0, "mean_rank": 1.5}, "b": {}},
    }
    args = argparse.Namespace(ratio=0.5, batches=[1], criteria=["a", "b"])
    lines = sbc.summary(results, args)
    row_a = next(line for line in lines if line.startswith("| a |"))
    row_b = next(line for line in lines if line.startswith("| b |"))
    assert row_a == "| a | 0.75 | 1.20 | 70.00 / 74.00 | 1.50 |"
    assert row_b == "| b | 1.00 | 0.90 | - | - |"


def test_without_the_large_versus_small_run_every_row_has_the_header_s_columns():
    results = {"models": {"swin_t": {"rows": [_row("swin_t_dense.onnx", 1, 60.0, 1.0),
                                              _row("swin_t_a.onnx", 1, 40.0, 0.75)]}},
               "large_vs_small": None, "accuracy": {"a": {}}}
    lines = [line for line in sbc.summary(results, argparse.Namespace(ratio=0.5, batches=[1], criteria=["a"]))
             if line.startswith("|")]
    assert "swin_s at swin_t" not in lines[0]
    assert len({line.count("|") for line in lines}) == 1, lines


def test_kept_structure_sums_a_report_s_blocks_and_the_table_gives_fractions(tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"blocks": [
        {"heads": 1, "heads_before": 4, "mlp_width": 10, "mlp_width_before": 20},
        {"heads": 3, "heads_before": 4, "mlp_width": 30, "mlp_width_before": 60}]}))
    assert sbc.kept_structure(report) == {"heads": 4, "heads_before": 8, "mlp": 40, "mlp_before": 80}
    results = {"plans": {"swin_t": {"a": sbc.kept_structure(report)}}}
    lines = sbc.plans_table(results, argparse.Namespace(ratio=0.5, criteria=["a", "b"]))
    assert "| a | 0.50 / 0.50 |" in lines and "| b | - |" in lines
    assert sbc.plans_table({"plans": {}}, argparse.Namespace(ratio=0.5, criteria=["a"])) == []


def test_every_criterion_compared_is_registered_and_in_the_committed_decision():
    from dimap_struct.prune.criteria import criterion_names

    assert set(sbc.DATA_FREE) <= set(criterion_names())
    decision = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "decision.json"
    for criterion in sbc.DATA_FREE:
        assert sbc.accuracy_columns(decision, criterion)["mean_rank"] is not None, criterion
