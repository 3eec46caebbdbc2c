"""DIMAP scores against a brute-force reference, and the properties DIMAP.md section 1 lists."""
import itertools

import pytest
import torch
from torch import nn

from dimap_struct.models.adapters import AttentionSite, MlpSite
from dimap_struct.prune.scoring import (
    channel_weight_views,
    dimap_weight_scores,
    group_scores,
    head_weight_views,
    relative_energy_scores,
)


def brute_force_dimap(weight: torch.Tensor) -> list[float]:
    """The paper's formula, literally: rank by |w| (ties by flat index, earlier = larger), then
    Imp(w_(j)) = w_(j)^2 / sum_{i <= j} w_(i)^2."""
    flat = [float(x) for x in weight.reshape(-1).tolist()]
    ranked = sorted(range(len(flat)), key=lambda i: (-abs(flat[i]), i))
    scores = [0.0] * len(flat)
    for j, idx in enumerate(ranked):
        denom = sum(flat[ranked[i]] ** 2 for i in range(j + 1))
        scores[idx] = flat[idx] ** 2 / denom if denom > 0 else 0.0
    return scores


@pytest.mark.parametrize("shape", [(7,), (5, 6), (3, 4, 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(shape, seed):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * (seed + 1) * 0.01
    ours = dimap_weight_scores(w).reshape(-1).tolist()
    assert ours == pytest.approx(brute_force_dimap(w), rel=1e-12, abs=1e-15)


def test_matches_brute_force_with_ties_and_zeros():
    w = torch.tensor([[0.5, -0.5, 0.0], [0.25, 0.5, -0.25], [0.0, 1.0, -1.0]])
    assert dimap_weight_scores(w).reshape(-1).tolist() == pytest.approx(brute_force_dimap(w), abs=1e-15)


def test_largest_scores_one_and_range():
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(3))
    s = dimap_weight_scores(w)
    assert s.flatten()[w.abs().argmax()] == 1.0
    assert float(s.max()) == 1.0 and float(s.min()) > 0


def test_order_is_magnitude_order():
    w = torch.randn(500, generator=torch.Generator().manual_seed(4))
    s = dimap_weight_scores(w)
    by_magnitude = torch.argsort(w.abs(), descending=True)
    assert torch.all(s[by_magnitude][1:] <= s[by_magnitude][:-1])


@pytest.mark.parametrize("scale", [1e-4, 0.37, 12.0])
def test_scale_invariant(scale):
    w = torch.randn(20, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(dimap_weight_scores(w * scale), dimap_weight_scores(w), rtol=1e-12)


def test_ties_are_deterministic_by_flat_index():
    w = torch.full((8,), 0.3)
    s = dimap_weight_scores(w)
    # equal magnitudes: the earlier index ranks as larger, so scores fall as 1, 1/2, 1/3, ...
    assert s.tolist() == pytest.approx([1 / (k + 1) for k in range(8)])
    assert torch.equal(s, dimap_weight_scores(w.clone()))


def test_relative_energy_float64_and_shape():
    e = torch.rand(4, 3)
    s = relative_energy_scores(e)
    assert s.dtype == torch.float64 and s.shape == e.shape


# ---- structured groups (DIMAP.md section 4) ------------------------------------------------

def _attention_site(heads=3, d=4, c=6, seed=0) -> AttentionSite:
    torch.manual_seed(seed)
    qkv, proj = nn.Linear(c, 3 * heads * d), nn.Linear(heads * d, c)
    return AttentionSite(module=nn.Module(), qkv=qkv, proj=proj, num_heads=heads, head_dim=d, window_area=4)


def _head_weights(site: AttentionSite, h: int) -> tuple[list[float], list[float]]:
    """Brute force: the qkv weights and proj weights head h owns, by explicit index arithmetic."""
    H, d = site.num_heads, site.head_dim
    qkv_rows = [t * H * d + h * d + i for t in range(3) for i in range(d)]
    qkv = [float(site.qkv.weight.detach()[r, c]) for r in qkv_rows for c in range(site.qkv.in_features)]
    proj = [float(site.proj.weight.detach()[r, h * d + i]) for r in range(site.proj.out_features) for i in range(d)]
    return qkv, proj


def _brute_group_level(energies: list[float]) -> list[float]:
    ranked = sorted(range(len(energies)), key=lambda i: (-energies[i], i))
    out = [0.0] * len(energies)
    for j, g in enumerate(ranked):
        out[g] = energies[g] / sum(energies[ranked[i]] for i in range(j + 1))
    return out


def test_head_scores_option_a_brute_force():
    site = _attention_site()
    per_head = [_head_weights(site, h) for h in range(site.num_heads)]
    qkv_imp = _brute_group_level([sum(x * x for x in q) for q, _ in per_head])
    proj_imp = _brute_group_level([sum(x * x for x in p) for _, p in per_head])
    expected = [(a + b) / 2 for a, b in zip(qkv_imp, proj_imp)]
    assert group_scores(head_weight_views(site), "group").tolist() == pytest.approx(expected, rel=1e-9)


def test_head_scores_option_b_brute_force():
    site = _attention_site(seed=1)
    qkv_scores = brute_force_dimap(site.qkv.weight.detach())
    proj_scores = brute_force_dimap(site.proj.weight.detach())
    H, d, c = site.num_heads, site.head_dim, site.qkv.in_features
    expected = []
    for h in range(H):
        mine = [qkv_scores[(t * H * d + h * d + i) * c + col] for t in range(3) for i in range(d) for col in range(c)]
        mine += [proj_scores[r * H * d + h * d + i] for r in range(site.proj.out_features) for i in range(d)]
        expected.append(sum(mine) / len(mine))
    assert group_scores(head_weight_views(site), "weight").tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("mode", ["group", "weight"])
def test_channel_scores_brute_force(mode):
    torch.manual_seed(2)
    site = MlpSite(nn.Linear(5, 7), nn.Linear(7, 5))
    w1, w2 = site.fc1.weight.detach().double(), site.fc2.weight.detach().double()
    if mode == "group":
        a = _brute_group_level([float((w1[j] ** 2).sum()) for j in range(7)])
        b = _brute_group_level([float((w2[:, j] ** 2).sum()) for j in range(7)])
        expected = [(x + y) / 2 for x, y in zip(a, b)]
    else:
        s1, s2 = brute_force_dimap(w1), brute_force_dimap(w2)
        expected = [(sum(s1[j * 5 + i] for i in range(5)) + sum(s2[r * 7 + j] for r in range(5))) / 10
                    for j in range(7)]
    assert group_scores(channel_weight_views(site), mode).tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("mode", ["group", "weight"])
def test_group_scores_are_layer_scale_invariant(mode):
    site = _attention_site(seed=3)
    before = group_scores(head_weight_views(site), mode)
    with torch.no_grad():
        site.qkv.weight.mul_(40.0)
        site.proj.weight.mul_(0.01)
    assert torch.allclose(group_scores(head_weight_views(site), mode), before, rtol=1e-9)


def test_zeroed_group_scores_lowest():
    site = _attention_site(seed=4)
    with torch.no_grad():
        rows = [t * 12 + 4 + i for t, i in itertools.product(range(3), range(4))]
        site.qkv.weight[rows] = 0
        site.proj.weight[:, 4:8] = 0
    for mode in ("group", "weight"):
        s = group_scores(head_weight_views(site), mode)
        assert int(s.argmin()) == 1 and float(s[1]) == 0.0


def test_unknown_mode():
    with pytest.raises(ValueError):
        group_scores([torch.ones(2, 2)], "median")
