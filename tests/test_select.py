"""Module-aware selection: one threshold per module, equal weight fraction, constraints kept."""
import copy

import pytest
import torch

import dimap_struct
from dimap_struct.prune.criteria import score
from dimap_struct.models import wrap_model


def _blocks(model):
    return wrap_model(model).adapter.blocks()


@pytest.mark.parametrize("mode", ["group", "weight"])
def test_one_threshold_per_module(narrow_swin, mode):
    original = narrow_swin
    result = dimap_struct.compress(original, 0.5, criterion="dimap-paper", score_mode=mode, min_heads=1, min_mlp=8)
    scores = score("dimap-paper", _blocks(copy.deepcopy(original)), score_mode=mode)
    plan, thresholds = result.selection.plan, result.selection.thresholds
    for kind, per_block, kept_per_block, protect in (
        ("attention", scores.heads, plan.heads, 1), ("mlp", scores.mlp, plan.mlp, 8)):
        removed, kept = [], []
        for s, keep in zip(per_block, kept_per_block):
            best = set(torch.argsort(s, descending=True, stable=True)[:protect].tolist())
            removed += [float(s[i]) for i in range(len(s)) if i not in keep]
            kept += [float(s[i]) for i in keep if i not in best]
        assert removed, kind
        assert max(removed) <= thresholds[kind] <= min(kept), kind


def test_equal_weight_fraction_per_module(random_model):
    result = dimap_struct.compress(random_model("swin_t"), 0.5, criterion="dimap-paper")
    removed = result.selection.removed_weight_fraction
    assert abs(removed["attention"] - removed["mlp"]) < 0.01
    before, after = result.report.original.params_by_module, result.report.pruned.params_by_module
    # attention params include biases and bias tables, so allow a little slack
    for kind in ("attention", "mlp"):
        assert abs((1 - after[kind] / before[kind]) - removed[kind]) < 0.02, kind


def test_scaling_one_block_changes_nothing(narrow_swin):
    """Scores are per-layer relative: a block whose weights are 100x larger is not favoured."""
    original = narrow_swin
    scaled = copy.deepcopy(original)
    blk = scaled.layers[2].blocks[1]
    with torch.no_grad():
        for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            lin.weight.mul_(100.0)
    a = dimap_struct.compress(original, 0.5).selection.plan
    b = dimap_struct.compress(scaled, 0.5).selection.plan
    assert a.heads == b.heads and a.mlp == b.mlp


def test_constraints_and_round_to(narrow_swin):
    result = dimap_struct.compress(narrow_swin, 0.4, min_heads=2, min_mlp=64, round_to=16)
    plan = result.selection.plan
    assert min(plan.head_counts) >= 2
    assert min(plan.mlp_widths) >= 64
    assert all(w % 16 == 0 for w in plan.mlp_widths)
    assert abs(result.report.achieved.ratio - 0.4) <= 0.01


def test_unreachable_target_is_reported(narrow_swin):
    result = dimap_struct.compress(narrow_swin, 0.05)
    sel = result.selection
    assert not sel.on_target and "not reachable" in sel.note
    assert min(sel.plan.head_counts) >= 1 and min(sel.plan.mlp_widths) >= 8
    assert any("not reachable" in n for n in result.report.notes)


def test_ratio_one_keeps_everything(narrow_swin):
    result = dimap_struct.compress(narrow_swin, 1.0)
    assert result.report.achieved.ratio == 1.0
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(result.model(x), narrow_swin(x), atol=1e-6)
