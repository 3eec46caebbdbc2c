"""Selection on a small synthetic cost model (no Swin): the budget search, floors, rounding and
each policy's rule, against brute-force references (docs/method.md section 4)."""
import itertools

import pytest
import torch

from dimap_struct.prune.costs import BlockCost, CostModel, Term
from dimap_struct.prune.criteria import GroupScores
from dimap_struct.prune.select import select_to_budget

HEADS, CHANNELS = (2, 3, 4), (6, 5, 8)


def _costs() -> CostModel:
    blocks = [BlockCost(name=f"b{i}", stage=i, num_heads=h, mlp_width=m, macs_per_head=100 * (i + 1),
                        macs_per_channel=30 + 5 * i, params_per_head=10, params_per_channel=3)
              for i, (h, m) in enumerate(zip(HEADS, CHANNELS))]
    return CostModel(blocks, [Term("stage0", "aux", 50)], [Term("stage0", "aux", 7)])


def _scores(seed: int = 0) -> GroupScores:
    """Random scores, with random distortions (for 'bound-split'; the other policies ignore them)."""
    gen = torch.Generator().manual_seed(seed)
    heads = [torch.rand(h, generator=gen, dtype=torch.float64) for h in HEADS]
    mlp = [torch.rand(m, generator=gen, dtype=torch.float64) for m in CHANNELS]
    distortion = GroupScores(heads=[torch.rand(h, generator=gen, dtype=torch.float64) for h in HEADS],
                             mlp=[torch.rand(m, generator=gen, dtype=torch.float64) for m in CHANNELS])
    return GroupScores(heads=heads, mlp=mlp, distortion=distortion)


def _select(policy: str, ratio: float, **kw):
    costs = _costs()
    original = costs.count().macs
    weights = dict(head_weights=[40, 50, 60], channel_weights=[8, 8, 8])
    return select_to_budget(_scores(), costs, target_macs=int(ratio * original), policy=policy,
                            **weights, **kw), costs, original


def _kept_macs(costs, plan) -> int:
    return costs.count(plan.head_counts, plan.mlp_widths).macs


def test_analytic_macs_match_a_hand_count():
    costs = _costs()
    assert costs.count().macs == 50 + sum(h * 100 * (i + 1) + m * (30 + 5 * i)
                                          for i, (h, m) in enumerate(zip(HEADS, CHANNELS)))
    assert costs.count([1, 1, 1], [1, 1, 1]).macs == 50 + 100 + 200 + 300 + 30 + 35 + 40


@pytest.mark.parametrize("policy", ["module-aware", "one-module", "uniform", "distortion", "bound-split"])
@pytest.mark.parametrize("ratio", [0.8, 0.6, 0.45])
def test_budget_is_met_as_closely_as_the_policy_allows(policy, ratio):
    selection, costs, original = _select(policy, ratio, min_heads=1, min_mlp=1)
    plan = selection.plan
    assert _kept_macs(costs, plan) == selection.achieved_macs
    assert min(plan.head_counts) >= 1 and min(plan.mlp_widths) >= 1
    # no other knob value of this policy lands closer to the target: scan it finely (brute force)
    target = selection.target_macs
    best = abs(selection.achieved_macs - target)
    scan = [abs(_macs_at(policy, q, costs) - target) for q in torch.linspace(0, 1, 401).tolist()]
    assert best <= min(scan)


def _macs_at(policy: str, q: float, costs) -> int:
    from dimap_struct.prune.select import POLICIES, _Module

    scores, blocks = _scores(), _costs().blocks
    modules = _modules(scores, blocks)
    rule = POLICIES[policy](modules, [1, 1])
    heads, widths = rule.kept_counts(q)
    return costs.count(heads, widths).macs


def _modules(scores, blocks):
    from dimap_struct.prune.select import _Module

    return [_Module(scores.heads, [40, 50, 60], 1, [b.macs_per_head for b in blocks], scores.distortion.heads),
            _Module(scores.mlp, [8, 8, 8], 1, [b.macs_per_channel for b in blocks], scores.distortion.mlp)]


@pytest.mark.parametrize("q", [0.0, 0.1, 0.3, 0.5, 0.7, 0.95, 1.0])
def test_bound_split_minimises_the_squared_bound_by_brute_force(q):
    """Over every pair of prefixes (k heads, j channels of the modules' removal orders) that
    removes at least q of the candidates' MACs, the policy's pair has the least sum of
    distortions; and each module removes lowest-score first."""
    from dimap_struct.prune.select import POLICIES

    scores, blocks = _scores(), _costs().blocks
    heads, mlp = _modules(scores, blocks)
    rule = POLICIES["bound-split"]([heads, mlp], [1, 1])
    order = [[(m.block[n], m.index[n]) for n in range(len(m.block))] for m in (heads, mlp)]
    per_group = [([b.macs_per_head for b in blocks], scores.distortion.heads),
                 ([b.macs_per_channel for b in blocks], scores.distortion.mlp)]

    def removed_sum(module, count, what):
        macs, dist = per_group[module]
        return sum(macs[b] if what == "macs" else float(dist[b][i]) for b, i in order[module][:count])

    total = removed_sum(0, len(order[0]), "macs") + removed_sum(1, len(order[1]), "macs")
    feasible = [(removed_sum(0, k, "dist") + removed_sum(1, j, "dist"), k, j)
                for k in range(len(order[0]) + 1) for j in range(len(order[1]) + 1)
                if removed_sum(0, k, "macs") + removed_sum(1, j, "macs") >= q * total - 1e-9]
    best = min(feasible)[0]
    k, j = rule.removed(q)
    assert removed_sum(0, k, "macs") + removed_sum(1, j, "macs") >= q * total - 1e-6
    assert removed_sum(0, k, "dist") + removed_sum(1, j, "dist") == pytest.approx(best, abs=1e-12)


def test_dimap_split_orders_by_dimap_and_weighs_by_energy_fractions(random_model):
    """The criterion's two score sets are what docs/method.md says: the order is
    dimap-cost-global's score (DIMAP's, which its policy divides per MAC), the distortion
    dimap-bound's energy fraction."""
    from dimap_struct.prune.costs import build_cost_model
    from dimap_struct.prune.criteria import score

    from dimap_struct.prune.replay import load_any

    loaded = load_any(random_model("swin_t"))
    blocks = loaded.adapter.blocks()
    costs = build_cost_model(loaded.model, loaded.adapter, blocks, (3, 224, 224))
    split = score("dimap-split", blocks, costs=costs)
    order = score("dimap-cost-global", blocks, costs=costs)
    energy = score("dimap-bound", blocks, costs=costs)
    for got, want in ((split.heads, order.heads), (split.mlp, order.mlp),
                      (split.distortion.heads, energy.heads), (split.distortion.mlp, energy.mlp)):
        assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("q", [0.2, 0.55, 0.9])
def test_bound_split_with_a_third_module_by_brute_force(q):
    """With residual channels as a third module (its own MACs per group), the policy's prefixes
    have the least distortion over every feasible triple of prefixes."""
    from dimap_struct.prune.select import POLICIES, _Module

    gen = torch.Generator().manual_seed(5)
    scores, blocks = _scores(), _costs().blocks
    heads, mlp = _modules(scores, blocks)
    res_scores = [torch.rand(5, generator=gen, dtype=torch.float64), torch.rand(4, generator=gen, dtype=torch.float64)]
    res_dist = [torch.rand(5, generator=gen, dtype=torch.float64), torch.rand(4, generator=gen, dtype=torch.float64)]
    residual = _Module(res_scores, [20, 30], 1, [70.0, 90.0], res_dist)
    rule = POLICIES["bound-split"]([heads, mlp, residual], [1, 1, 1])
    mods = [heads, mlp, residual]
    total = sum(float(m.cum_macs[-1]) for m in mods)
    feasible = [(sum(float(m.cum_distortion[c]) for m, c in zip(mods, counts)), counts)
                for counts in itertools.product(*[range(len(m.cum_macs)) for m in mods])
                if sum(float(m.cum_macs[c]) for m, c in zip(mods, counts)) >= q * total - 1e-9]
    best = min(f for f, _ in feasible)
    counts = rule.removed(q)
    assert sum(float(m.cum_macs[c]) for m, c in zip(mods, counts)) >= q * total - 1e-6
    assert sum(float(m.cum_distortion[c]) for m, c in zip(mods, counts)) == pytest.approx(best, abs=1e-12)


def test_bound_split_needs_distortions():
    from dimap_struct.prune.select import POLICIES, _Module

    scores, blocks = _scores(), _costs().blocks
    plain = [_Module(scores.heads, [40, 50, 60], 1, [b.macs_per_head for b in blocks]),
             _Module(scores.mlp, [8, 8, 8], 1, [b.macs_per_channel for b in blocks])]
    with pytest.raises(ValueError, match="bound-split"):
        POLICIES["bound-split"](plain, [1, 1])


def test_one_module_removes_exactly_the_lowest_scores():
    selection, _, _ = _select("one-module", 0.6, min_heads=1, min_mlp=1)
    plan, scores = selection.plan, _scores()
    removed, kept = [], []
    for kind_scores, kind_plan in ((scores.heads, plan.heads), (scores.mlp, plan.mlp)):
        for s, keep in zip(kind_scores, kind_plan):
            best = int(torch.argmax(s))  # the floor of 1 protects each block's best group
            removed += [float(s[i]) for i in range(len(s)) if i not in keep]
            kept += [float(s[i]) for i in keep if i != best]
    assert removed and max(removed) <= min(kept)


def test_module_aware_removes_the_same_weight_fraction_from_both_modules():
    selection, _, _ = _select("module-aware", 0.5, min_heads=1, min_mlp=1)
    removed = selection.removed_weight_fraction
    # groups are whole: the fractions differ by at most one group's share of its module
    heads_total, mlp_total = sum(h * w for h, w in zip(HEADS, [40, 50, 60])), 8 * sum(CHANNELS)
    assert abs(removed["attention"] - removed["mlp"]) <= max(60 / heads_total, 8 / mlp_total) + 1e-9
    # inside each module the kept groups outrank the removed ones (one threshold per module)
    scores, plan = _scores(), selection.plan
    for kind_scores, kind_plan in ((scores.heads, plan.heads), (scores.mlp, plan.mlp)):
        removed_s = [float(s[i]) for s, k in zip(kind_scores, kind_plan) for i in range(len(s)) if i not in k]
        kept_s = [float(s[i]) for s, k in zip(kind_scores, kind_plan) for i in k if i != int(torch.argmax(s))]
        if removed_s:
            assert max(removed_s) <= min(kept_s)


def test_uniform_prunes_every_block_by_the_same_ratio():
    selection, _, _ = _select("uniform", 0.5, min_heads=1, min_mlp=1)
    q = selection.thresholds["uniform_ratio"]
    for n, kept in zip(CHANNELS, selection.plan.mlp_widths):
        assert kept == max(1, n - int(round(q * n)))


def test_floors_and_rounding():
    selection, _, _ = _select("module-aware", 0.3, min_heads=2, min_mlp=4, round_to=2)
    plan = selection.plan
    assert all(h >= min(2, n) for h, n in zip(plan.head_counts, HEADS))
    assert all(w >= 4 and (w % 2 == 0 or w == n) for w, n in zip(plan.mlp_widths, CHANNELS))
    # every kept index is a real group, sorted, without repeats
    for kept, n in itertools.chain(zip(plan.heads, HEADS), zip(plan.mlp, CHANNELS)):
        assert kept == sorted(set(kept)) and all(0 <= i < n for i in kept)


def test_unreachable_target_is_reported_not_hidden():
    selection, _, original = _select("module-aware", 0.05, min_heads=2, min_mlp=5)
    assert not selection.on_target and selection.note and "not reachable" in selection.note
    assert selection.achieved_macs > selection.target_macs


def _distortion(scores, plan, costs) -> float:
    """The objective of the distortion rule: sum over streams of sqrt(removed energy fraction)."""
    total = 0.0
    for kind_scores, kind_plan in ((scores.heads, plan.heads), (scores.mlp, plan.mlp)):
        for s, keep in zip(kind_scores, kind_plan):
            total += float(sum(s[i] for i in range(len(s)) if i not in keep)) ** 0.5
    return total


def test_distortion_rule_is_the_greedy_of_its_formula():
    """Replay the rule by brute force: at every step, over all candidates of every stream (not
    only each stream's lowest), remove the one adding the least sqrt-distortion per MAC."""
    from dimap_struct.prune.select import POLICIES, _Module

    scores, blocks = _scores(), _costs().blocks
    modules = [_Module(scores.heads, [40, 50, 60], 1, [b.macs_per_head for b in blocks]),
               _Module(scores.mlp, [8, 8, 8], 1, [b.macs_per_channel for b in blocks])]
    rule = POLICIES["distortion"](modules, [1, 1])
    kinds = [(scores.heads, [b.macs_per_head for b in blocks]), (scores.mlp, [b.macs_per_channel for b in blocks])]
    left = {(i, b, g) for i, (sc, _) in enumerate(kinds) for b, s in enumerate(sc)
            for g in range(len(s)) if g != int(torch.argmax(s))}
    lost = {(i, b): 0.0 for i in range(2) for b in range(3)}
    expected = []
    while left:
        def cost(c):
            i, b, g = c
            f = float(kinds[i][0][b][g])
            return ((lost[i, b] + f) ** 0.5 - lost[i, b] ** 0.5) / kinds[i][1][b], c
        _, pick = min(cost(c) for c in left)
        expected.append(pick)
        left.remove(pick)
        lost[pick[0], pick[1]] += float(kinds[pick[0]][0][pick[1]][pick[2]])
    assert rule.sequence == expected


def test_distortion_rule_beats_the_others_on_its_own_objective():
    costs = _costs()
    results = {p: _select(p, 0.6, min_heads=1, min_mlp=1)[0] for p in ("distortion", "module-aware", "one-module")}
    objective = {p: _distortion(_scores(), r.plan, costs) for p, r in results.items()}
    macs = {p: r.achieved_macs for p, r in results.items()}
    # at no more MACs than the others keep, the greedy's distortion is the smallest
    for other in ("module-aware", "one-module"):
        if macs["distortion"] <= macs[other]:
            assert objective["distortion"] <= objective[other] + 1e-12


def test_energy_fractions_against_a_loop():
    from dimap_struct.prune.scoring import energy_fractions

    gen = torch.Generator().manual_seed(3)
    views = [torch.randn(4, 6, generator=gen), torch.randn(4, 10, generator=gen)]
    total = sum(float((v.double() ** 2).sum()) for v in views)
    expected = [sum(float((v[g].double() ** 2).sum()) for v in views) / total for g in range(4)]
    assert torch.allclose(energy_fractions(views), torch.tensor(expected, dtype=torch.float64))
    assert float(energy_fractions(views).sum()) == pytest.approx(1.0)


def test_an_off_target_bisection_falls_back_to_a_scan(monkeypatch):
    """A policy whose MACs are not monotone in q (here: every other step of q removes nothing)
    can mislead the bisection; the search then scans q and finds a plan on target."""
    from dimap_struct.prune import select

    class Jumpy(select.Policy):
        def removed(self, q):
            if int(q * 40) % 2 and q < 0.9:
                return [0, 0]
            return [int(round(q * len(m.score))) for m in self.modules]

    monkeypatch.setitem(select.POLICIES, "jumpy", Jumpy)
    costs = _costs()
    original = costs.count().macs
    sel = select_to_budget(_scores(), costs, head_weights=[40, 50, 60], channel_weights=[8, 8, 8],
                           target_macs=int(0.6 * original), policy="jumpy", min_heads=1, min_mlp=1)
    assert sel.on_target, sel.note


@pytest.mark.parametrize("policy", ["module-aware", "one-module", "bound-split"])
def test_a_per_mac_policy_ranks_each_score_divided_by_its_groups_macs(policy):
    costs, scores = _costs(), _scores()
    per_mac = GroupScores(heads=[s / b.macs_per_head for s, b in zip(scores.heads, costs.blocks)],
                          mlp=[s / b.macs_per_channel for s, b in zip(scores.mlp, costs.blocks)],
                          distortion=scores.distortion)
    weights = dict(head_weights=[40, 50, 60], channel_weights=[8, 8, 8], min_heads=1, min_mlp=1)
    for ratio in (0.3, 0.6, 0.85):
        target = int(ratio * costs.count().macs)
        own = select_to_budget(scores, costs, target_macs=target, policy=f"{policy}-per-mac", **weights)
        by_hand = select_to_budget(per_mac, costs, target_macs=target, policy=policy, **weights)
        assert own.plan == by_hand.plan and own.thresholds == by_hand.thresholds, ratio
