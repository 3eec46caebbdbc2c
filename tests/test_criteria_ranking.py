"""Criteria: same surgery and MACs search for all, only the ranking differs (scores and selection
behaviour per criterion name)."""
import copy

import pytest
import torch

import dimap_struct
from dimap_struct.models import wrap_model
from dimap_struct.prune.criteria import ALIASES, get_criterion, score
from shared_data import mnist_dir

MNIST = mnist_dir()


def _compress(model, criterion, **kw):
    if get_criterion(criterion).needs_data:
        if MNIST is None:
            pytest.skip("taylor needs the shared MNIST directory for calibration")
        # 8 images at 224 x 224 are 25,088 tokens per block: enough statistics for the criterion
        # alone (recovery: test_recovery), a quarter of the time of 32
        kw.update(calib_data=MNIST, calib_batches=1, calib_images=8, recovery="none")
    return dimap_struct.compress(model, kw.pop("flops", 0.5), criterion=criterion, **kw)


@pytest.fixture(scope="module")
def reference():
    return dimap_struct.load_model("reference")


@pytest.mark.parametrize("criterion", list(ALIASES))  # every score is in the table (tests/test_policy.py)
def test_every_criterion_is_mask_equivalent_and_on_target(narrow_swin, reference, criterion):
    # the criteria that need data score on the MNIST reference, whose own images they calibrate
    # on: at 224 x 224 on swin_t they took a minute each, most of it backward passes
    model = reference if get_criterion(criterion).needs_data else narrow_swin
    result = _compress(model, criterion)
    report = result.report
    assert report.criterion == criterion
    assert report.verification["mask_equivalence_max_abs_diff"] <= 1e-4
    assert abs(report.achieved.ratio - 0.5) <= 0.01
    assert report.selection["policy"] == report.policy == get_criterion(criterion).policy


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_uniform_criteria_prune_every_block_alike(narrow_swin, criterion):
    plan = _compress(narrow_swin, criterion).selection.plan
    blocks = wrap_model(copy.deepcopy(narrow_swin)).adapter.blocks()
    mlp_ratios = [w / b.mlp.width for w, b in zip(plan.mlp_widths, blocks)]
    assert max(mlp_ratios) - min(mlp_ratios) <= 2 / min(b.mlp.width for b in blocks)
    removed = 1 - mlp_ratios[0]
    for h, b in zip(plan.head_counts, blocks):  # heads: the same ratio, rounded per block (>= 1 kept)
        H = b.attn.num_heads
        assert h == 1 or abs((1 - h / H) - removed) <= 0.5 / H + 0.5 / b.mlp.width + 1e-9
    # within a block the kept channels are the largest by norm
    scores = score(criterion, blocks)
    for s, kept in zip(scores.mlp, plan.mlp):
        dropped = sorted(set(range(len(s))) - set(kept))
        if dropped:
            assert s[dropped].max() <= s[kept].min()


def test_random_is_seeded(narrow_swin):
    model = narrow_swin
    a = _compress(model, "random", seed=1).selection.plan
    b = _compress(model, "random", seed=1).selection.plan
    c = _compress(model, "random", seed=2).selection.plan
    assert a.heads == b.heads and a.mlp == b.mlp
    assert a.mlp != c.mlp


def test_lamp_global_has_one_threshold_across_modules(narrow_swin):
    model = narrow_swin
    result = _compress(model, "lamp-global")
    blocks = wrap_model(copy.deepcopy(model)).adapter.blocks()
    scores = score("lamp-global", blocks)
    removed, kept = [], []
    for kind_scores, kind_plan, protect in ((scores.heads, result.selection.plan.heads, 1),
                                            (scores.mlp, result.selection.plan.mlp, 8)):
        for s, keep in zip(kind_scores, kind_plan):
            best = set(torch.argsort(s, descending=True, stable=True)[:protect].tolist())
            removed += [float(s[i]) for i in range(len(s)) if i not in keep]
            kept += [float(s[i]) for i in keep if i not in best]
    assert max(removed) <= min(kept)


def test_dimap_cost_ranks_by_score_per_group_macs(narrow_swin):
    """dimap-cost keeps what module-aware keeps when given DIMAP's scores divided by each group's MACs."""
    result = _compress(narrow_swin, "dimap-cost")
    from dimap_struct.prune.costs import build_cost_model
    from dimap_struct.prune.select import GroupScores, select_to_budget

    loaded = wrap_model(copy.deepcopy(narrow_swin))
    blocks = loaded.adapter.blocks()
    costs = build_cost_model(loaded.model, loaded.adapter, blocks, (3, 224, 224))
    base = score("dimap-paper", blocks)
    per_mac = GroupScores(heads=[s / bc.macs_per_head for s, bc in zip(base.heads, costs.blocks)],
                          mlp=[s / bc.macs_per_channel for s, bc in zip(base.mlp, costs.blocks)])
    by_hand = select_to_budget(per_mac, costs, [4 * b.attn.head_dim * b.attn.in_features for b in blocks],
                               [2 * b.mlp.fc1.in_features for b in blocks], result.selection.target_macs,
                               policy="module-aware", min_mlp=8)
    assert by_hand.plan == result.selection.plan
    assert result.report.achieved.on_target
