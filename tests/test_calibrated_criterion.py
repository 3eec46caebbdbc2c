"""`dimap-calib` (prune/criteria/calibrated.py): the greedy brain-surgeon costs against brute-force
least squares, its reduction to DIMAP's weight energy fractions on white inputs, and the
pipeline sharing one set of calibration statistics between scoring and recovery."""
import itertools

import pytest
import torch

from dimap_struct.prune.criteria.calibrated import greedy_refit_costs, greedy_removal, in_float32
from dimap_struct.prune.calibration import LayerStats
from dimap_struct.recover.oneshot import solve
from shared_data import mnist_dir


def _layer(seed: int, features: int, out: int = 4, tokens: int = 300) -> LayerStats:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, features, generator=gen, dtype=torch.float64)
    x = x @ torch.randn(features, features, generator=gen, dtype=torch.float64) + 0.5  # correlated, off-centre
    xa = torch.cat([x, torch.ones(tokens, 1, dtype=torch.float64)], 1)
    return LayerStats(xa.T @ xa, tokens, torch.randn(out, features, generator=gen, dtype=torch.float64),
                      torch.randn(out, generator=gen, dtype=torch.float64))


def _refit_error(stats: LayerStats, removed: list[int], group_size: int) -> float:
    """Brute force: the least-squares refit error of keeping every other group (no damping)."""
    gone = {g * group_size + i for g in removed for i in range(group_size)}
    kept = [c for c in range(stats.weight.shape[1]) if c not in gone]
    return solve(stats, kept, None, "refit", ridge=0.0)[3]


@pytest.mark.parametrize("group_size", [1, 3])
def test_greedy_costs_add_up_to_the_refit_error_and_pick_the_cheapest(group_size):
    stats = _layer(0, 4 * group_size)
    order, added, _ = greedy_removal(stats, group_size, ridge=0.0)
    assert sorted(order) == list(range(4))
    for k in range(1, 4):
        prefix = order[:k]
        assert float(added[prefix].sum()) == pytest.approx(_refit_error(stats, prefix, group_size), rel=1e-6)
        # the k-th removal is the cheapest single addition to the first k - 1
        candidates = [g for g in range(4) if g not in order[:k - 1]]
        best = min(candidates, key=lambda g: _refit_error(stats, order[:k - 1] + [g], group_size))
        assert order[k - 1] == best


def test_scores_are_non_decreasing_along_the_removal_order():
    stats = _layer(1, 12)
    order, _, _ = greedy_removal(stats, 1, ridge=0.0)
    scores = greedy_refit_costs(stats, 1, ridge=0.0)
    assert all(a <= b for a, b in itertools.pairwise(scores[order].tolist()))


def test_on_white_inputs_the_cost_is_dimaps_weight_energy_fraction():
    """Uncorrelated unit-variance inputs leave the refit nothing to compensate with: a column's
    cost is its share of the layer's energy, the data-free DIMAP quantity."""
    gen = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(5, 6, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    stats = LayerStats(100.0 * torch.eye(7, dtype=torch.float64), 100, weight, bias)
    order, added, energy = greedy_removal(stats, 1, ridge=0.0)
    assert energy == pytest.approx(float(weight.square().sum() + bias.square().sum()))
    assert torch.allclose(added, weight.square().sum(0), rtol=1e-9)
    assert order == torch.argsort(weight.square().sum(0), stable=True).tolist()


@pytest.mark.skipif(mnist_dir() is None, reason="needs ../shared/data/mnist")
def test_the_pipeline_scores_and_recovers_from_the_same_statistics():
    from dimap_struct.models import load_model
    from dimap_struct.pipeline import compress

    loaded = load_model("reference")
    plans = {}
    for recovery in ("none", "refit"):
        result = compress(loaded, 0.5, criterion="dimap-calib", calib_data=str(mnist_dir()), calib_images=64,
                          recovery=recovery)
        assert abs(result.report.achieved.ratio - 0.5) <= 0.01
        plans[recovery] = result.report.architecture
    assert plans["none"] == plans["refit"]
    assert result.report.recovery["images"] == 64 and result.report.criterion == "dimap-calib"


def test_float32_removes_what_float64_removes():
    """The criterion runs the greedy in float32 for speed; on a wide layer with correlated,
    non-negative (GELU-like) inputs, the first half and first three quarters removed are the same."""
    gen = torch.Generator().manual_seed(3)
    features = 384
    mix = torch.eye(features, dtype=torch.float64) + 0.3 * torch.randn(features, features, generator=gen,
                                                                         dtype=torch.float64) / features ** 0.5
    x = torch.relu(torch.randn(2000, features, generator=gen, dtype=torch.float64) @ mix)
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    stats = LayerStats(xa.T @ xa, len(x), torch.randn(96, features, generator=gen, dtype=torch.float64),
                       torch.randn(96, generator=gen, dtype=torch.float64))
    exact, _, _ = greedy_removal(stats, 1)
    fast, _, _ = greedy_removal(in_float32(stats), 1)
    for share in (features // 2, 3 * features // 4):
        assert set(fast[:share]) == set(exact[:share])
