"""Analytic MACs / params against the paper's figures and against two independent counters."""
import pytest
import torch

import dimap_struct
from dimap_struct.prune.costs import build_cost_model
from dimap_struct.models import wrap_model

from macs import torch_counted_macs

PAPER = {"swin_t": (4.5e9, 28.3e6), "swin_s": (8.7e9, 49.6e6), "swin_b": (15.4e9, 87.8e6)}


@pytest.mark.parametrize("key", sorted(PAPER))
def test_unpruned_matches_paper(random_model, key):
    loaded = wrap_model(random_model(key))
    counts = build_cost_model(loaded.model, loaded.adapter, loaded.adapter.blocks(), (3, 224, 224)).count()
    macs, params = PAPER[key]
    assert counts.params == sum(p.numel() for p in loaded.model.parameters())
    assert abs(counts.macs / macs - 1) <= 0.01, counts.macs
    assert abs(counts.params / params - 1) <= 0.01, counts.params
    assert sum(counts.macs_by_stage.values()) == counts.macs == sum(counts.macs_by_module.values())


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_analytic_macs_match_torch_flop_counter(random_model, ratio):
    result = dimap_struct.compress(random_model("swin_t"), ratio)
    assert result.report.pruned.macs == torch_counted_macs(result.model, (3, 224, 224))
    assert result.report.pruned.params == sum(p.numel() for p in result.model.parameters())


@pytest.mark.parametrize("ratio", [0.9, 0.7, 0.5, 0.3, 0.15])
def test_achieved_macs_on_target(random_model, ratio):
    result = dimap_struct.compress(random_model("swin_t"), ratio)
    achieved = result.report.achieved
    assert achieved.on_target
    assert abs(achieved.ratio - ratio) <= 0.01


def test_absolute_budget(random_model):
    result = dimap_struct.compress(random_model("swin_t"), "2.2G")
    assert abs(result.report.achieved.macs - 2.2e9) <= 0.01 * result.report.original.macs
