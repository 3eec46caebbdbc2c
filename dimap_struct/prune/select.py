"""Select: the policies that turn group scores into a plan at a MACs (or latency) budget.

A policy maps a knob q in [0, 1] (more pruning as q grows) to the groups removed, and
`select_to_budget` searches q so that the pruned model lands on the target. Every block keeps its
`min_heads` best heads and `min_mlp` best channels; with `round_to > 1`, kept widths are rounded.
The policies (docs/method.md section 4), by their names in `POLICIES`:

- `module-aware` (the paper's rule): all heads of the model form one module, all MLP channels
  another; each module loses the same fraction q of its weights, lowest score first;
- `one-module`: heads and channels ranked together under one threshold (the paper's "model as
  module" ablation);
- `uniform`: every block removes the same fraction of each kind of group;
- `distortion`: spends the budget where DIMAP's distortion bound grows least per MAC saved;
- `bound-split`: each module keeps its own order, and DIMAP's squared bound decides how many MACs
  each module gives up (it reads `GroupScores.distortion`);
- `module-aware-per-mac`, `one-module-per-mac`, `bound-split-per-mac`: the same rules on each
  group's score divided by the MACs it costs.

Adding a policy means one `Policy` subclass and its entry in `POLICIES`.
"""
from __future__ import annotations

import bisect
import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .costs import CostModel, residual_channel_macs


@dataclass
class GroupScores:
    """Per block: `heads[b]` has shape (num_heads,), `mlp[b]` has shape (mlp_width,)."""

    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]
    distortion: "GroupScores | None" = None
    """For the bound-split policies: each group's energy fraction f_g (same shapes), the
    distortion its removal adds to DIMAP's squared bound; the scores above order the removals."""


MODULE_NAMES = ("attention", "mlp", "residual")


@dataclass
class Plan:
    """Kept structure per block: sorted head indices and sorted MLP channel indices."""

    blocks: list[str]
    heads: list[list[int]]
    mlp: list[list[int]]
    residual: list[list[int]] | None = None
    """Kept residual channels per stage (None: residual width untouched)."""

    @property
    def head_counts(self) -> list[int]:
        return [len(h) for h in self.heads]

    @property
    def mlp_widths(self) -> list[int]:
        return [len(m) for m in self.mlp]

    @property
    def residual_widths(self) -> list[int] | None:
        return None if self.residual is None else [len(r) for r in self.residual]


@dataclass
class Selection:
    plan: Plan
    policy: str
    removed_weight_fraction: dict[str, float]
    """Per module (attention, mlp): fraction of its prunable weights removed."""
    thresholds: dict[str, float | None]
    target_macs: int
    achieved_macs: int
    original_macs: int
    on_target: bool
    """Achieved MACs (or cost) within `tolerance` (a fraction of the original) of the target."""
    note: str | None = None
    target_cost: float | None = None
    """With a cost other than MACs (`--latency`): its target, the plan's and the unpruned model's."""
    achieved_cost: float | None = None
    original_cost: float | None = None
    floor_cost: float | None = None
    """With a cost other than MACs: the cost of the policy's most pruned plan (every group it may
    remove removed, widths rounded), what the floors allow."""


class _Module:
    """One DIMAP module: all groups of one kind across blocks, ordered for removal."""

    def __init__(self, scores: list[torch.Tensor], weights_per_group: list[int], keep_at_least: int,
                 macs_per_group: list[float] | None = None, distortion: list[torch.Tensor] | None = None):
        self.sizes = [len(s) for s in scores]
        self.block_scores = scores
        self.macs_per_group = macs_per_group or [1.0] * len(scores)
        """MACs one group of each block costs (the distortion rule divides by it)."""
        self.ranked = [sorted(range(len(s)), key=lambda i: (-float(s[i]), i)) for s in scores]
        blocks, idxs, vals, weights = [], [], [], []
        for b, (s, w) in enumerate(zip(scores, weights_per_group)):
            for i in self.ranked[b][min(keep_at_least, len(s)):]:  # each block's best few are protected
                blocks.append(b), idxs.append(i), vals.append(float(s[i])), weights.append(w)
        # removal order: lowest score first; ties by (block, index) so the order is deterministic
        order = sorted(range(len(vals)), key=lambda j: (vals[j], blocks[j], idxs[j]))
        self.block = [blocks[j] for j in order]
        self.block_tensor = torch.tensor(self.block, dtype=torch.long)
        self.index = [idxs[j] for j in order]
        self.score = [vals[j] for j in order]
        self.cum_weight = torch.cumsum(torch.tensor([weights[j] for j in order], dtype=torch.float64), 0)
        self.total_weight = sum(w * n for w, n in zip(weights_per_group, self.sizes))
        # prefix sums along the removal order, from 0 groups removed (for the bound-split policy)
        self.cum_macs = torch.cumsum(torch.tensor([0.0] + [float(self.macs_per_group[b]) for b in self.block],
                                                  dtype=torch.float64), 0)
        self.cum_distortion = None if distortion is None else torch.cumsum(torch.tensor(
            [0.0] + [max(float(distortion[b][i]), 0.0) for b, i in zip(self.block, self.index)],
            dtype=torch.float64), 0)

    def removed_for_fraction(self, p: float) -> int:
        """Groups removed when the module loses (at most) the fraction p of its weights."""
        return int(torch.searchsorted(self.cum_weight, p * self.total_weight + 1e-9, right=True))

    def removed_below(self, threshold: float) -> int:
        """Groups whose score is at most `threshold` (they are removed first)."""
        return bisect.bisect_right(self.score, threshold)

    def kept_counts(self, removed: int) -> list[int]:
        counts = torch.bincount(self.block_tensor[:removed], minlength=len(self.sizes))
        return [n - int(r) for n, r in zip(self.sizes, counts)]

    def kept(self, removed: int) -> list[set[int]]:
        kept = [set(range(n)) for n in self.sizes]
        for j in range(removed):
            kept[self.block[j]].discard(self.index[j])
        return kept

    def threshold(self, removed: int) -> float | None:
        return self.score[removed - 1] if removed else None


class Policy:
    """Maps a knob q in [0, 1] (more pruning as q grows) to the groups each module removes.

    `modules` are the `_Module`s in a fixed order (attention heads, MLP channels and, with
    residual pruning, residual channels); `floors[i]` is what every block / stage of module i
    keeps at least."""

    summary: str = ""
    """One line for reports and help."""
    per_mac: tuple[str, ...] = ()
    """The modules (of `MODULE_NAMES`) whose scores are divided by the MACs one of their groups
    costs before they are ranked."""
    needs_distortion: bool = False
    """The rule reads `GroupScores.distortion` (and, with residual channels, `residual_distortion`)."""
    needs_latency: bool = False
    """The rule reads the latency table (`--latency`; `select_to_budget`'s `latency`)."""

    def __init__(self, modules: list[_Module], floors: list[int]):
        self.modules, self.floors = modules, floors

    def removed(self, q: float) -> list[int]:
        """Groups removed from each module, in its removal order."""
        raise NotImplementedError

    def kept_counts(self, q: float) -> list[list[int]]:
        return [m.kept_counts(r) for m, r in zip(self.modules, self.removed(q))]

    def kept(self, q: float) -> list[list[set[int]]]:
        return [m.kept(r) for m, r in zip(self.modules, self.removed(q))]

    def thresholds(self, q: float) -> list[float | None]:
        return [m.threshold(r) for m, r in zip(self.modules, self.removed(q))]


class ModuleAware(Policy):
    """The paper's rule: each module loses the same fraction q of its weights, lowest score first."""

    summary = "heads and MLP channels are two modules, each losing the same fraction of its weights"

    def removed(self, q):
        return [m.removed_for_fraction(q) for m in self.modules]


class OneModule(Policy):
    """All groups ranked together: one threshold, the q-quantile of all candidate scores."""

    summary = "all groups ranked together under one threshold"

    def __init__(self, *args):
        super().__init__(*args)
        self.all_scores = sorted(x for m in self.modules for x in m.score)

    def removed(self, q):
        k = int(round(q * len(self.all_scores)))
        if k == 0:
            return [0] * len(self.modules)
        t = self.all_scores[k - 1]
        return [m.removed_below(t) for m in self.modules]


class Uniform(Policy):
    """Every block (stage) removes the same fraction q of each kind of group (best kept)."""

    summary = "every block loses the same fraction of each kind of group"

    def kept_counts(self, q):
        return [[max(min(floor, n), n - int(round(q * n))) for n in m.sizes]
                for m, floor in zip(self.modules, self.floors)]

    def kept(self, q):
        return [[set(r[:k]) for r, k in zip(m.ranked, counts)]
                for m, counts in zip(self.modules, self.kept_counts(q))]

    def thresholds(self, q):
        return [None] * len(self.modules)


class _Greedy(Policy):
    """A policy that removes groups one at a time in a greedy order over streams: each block's
    heads, each block's MLP channels (and each stage's residual channels) form a stream, taken
    lowest score first; `priority(i, b, removable, position)` rates each stream's next group, and
    the least is removed next. The knob q is the fraction of the full sequence removed, so the
    cost falls monotonically with q."""

    def priority(self, i: int, b: int, removable: list[int], position: int) -> float:
        raise NotImplementedError

    def _order(self) -> None:
        streams = [(i, b, list(reversed(ranked[min(self.floors[i], len(ranked)):])))  # lowest score first
                   for i, m in enumerate(self.modules) for b, ranked in enumerate(m.ranked)]
        heap = [(self.priority(i, b, removable, 0), k) for k, (i, b, removable) in enumerate(streams) if removable]
        heapq.heapify(heap)
        position = [0] * len(streams)
        sequence = []
        while heap:
            _, k = heapq.heappop(heap)
            i, b, removable = streams[k]
            sequence.append((i, b, removable[position[k]]))
            position[k] += 1
            if position[k] < len(removable):
                heapq.heappush(heap, (self.priority(i, b, removable, position[k]), k))
        self.sequence = sequence
        self.seq_module = torch.tensor([i for i, _, _ in sequence], dtype=torch.long)
        self.seq_block = torch.tensor([b for _, b, _ in sequence], dtype=torch.long)

    def _prefix(self, q: float) -> int:
        return int(round(q * len(self.sequence)))

    def kept_counts(self, q):
        k = self._prefix(q)
        module, block = self.seq_module[:k], self.seq_block[:k]
        return [[n - int(r) for n, r in zip(m.sizes, torch.bincount(block[module == i], minlength=len(m.sizes)))]
                for i, m in enumerate(self.modules)]

    def kept(self, q):
        kept = [[set(range(n)) for n in m.sizes] for m in self.modules]
        for i, b, index in self.sequence[:self._prefix(q)]:
            kept[i][b].discard(index)
        return kept

    def thresholds(self, q):
        return [None] * len(self.modules)


class DistortionBudget(_Greedy):
    """DIMAP's bound as the objective (docs/method.md section 4): the scores are energy
    fractions f_g (`scoring.energy_fractions`), and each block's heads, each block's MLP
    channels and each stage's residual channels form one stream whose relative distortion is
    D = sqrt(sum of f over its removed groups). Greedy: remove next the group whose removal adds
    the least distortion per MAC saved, sqrt(E + f_g) - sqrt(E), divided by its MACs; within a
    stream that is always its lowest-f group still removable."""

    summary = "greedy on DIMAP's bound: the least relative distortion added per MAC saved"

    def __init__(self, modules, floors):
        super().__init__(modules, floors)
        self._energy: dict[tuple[int, int], list[float]] = {}
        self._order()

    def priority(self, i, b, removable, position):
        if (i, b) not in self._energy:  # the stream's removed energy after each prefix of its order
            scores = self.modules[i].block_scores[b]
            self._energy[i, b] = [0.0, *itertools.accumulate(max(float(scores[g]), 0.0) for g in removable)]
        before, after = self._energy[i, b][position], self._energy[i, b][position + 1]
        return (math.sqrt(after) - math.sqrt(before)) / max(self.modules[i].macs_per_group[b], 1e-9)


class PerMillisecond(_Greedy):
    """Under `--latency`: every head and MLP channel ranked together by its score over the
    milliseconds its removal saves, as the latency table predicts them at the block's current
    width (the marginal cost). Greedy: the next removal is the one, among each block's
    lowest-scored head and lowest-scored channel still removable, with the least score per ms
    saved. Removing a block's last head, or the last channels of its MLP, saves the whole
    branch's overhead (norm, window gathers, Softmax), so whole branches compete with single
    groups."""

    summary = "heads and MLP channels ranked together by score per millisecond saved (latency table)"
    needs_latency = True

    def __init__(self, modules, floors, latency=None):
        super().__init__(modules, floors)
        if latency is None or len(modules) != 2:
            raise ValueError("the per-ms policy needs a latency table (--latency) and no residual pruning")
        self.tables = [latency.stages[s] for s in latency.block_stages]
        self._order()

    def priority(self, i, b, removable, position):
        kept = self.modules[i].sizes[b] - position
        saving = (self.tables[b].head_saving if i == 0 else self.tables[b].channel_saving)(kept)
        return max(float(self.modules[i].block_scores[b][removable[position]]), 0.0) / max(saving, 1e-9)


class BoundSplit(Policy):
    """Each module removes a prefix of its own removal order (lowest score first); how much each
    removes is searched to minimise DIMAP's squared bound, the sum of the removed groups'
    energy fractions, among the splits that remove at least the MACs the knob asks for: q times
    the MACs of all candidates (docs/method.md section 4). Exact search over every prefix of the
    heads (and, with residual channels, every pair of head and residual prefixes), the MLP taking
    the shortest prefix that completes the MACs. The MACs of a residual channel are counted in
    the unpruned model, as by the 'distortion' policy."""

    summary = "each module in its own order; DIMAP's squared bound splits the MACs between them"
    needs_distortion = True

    def __init__(self, modules, floors):
        super().__init__(modules, floors)
        if any(m.cum_distortion is None for m in modules):
            raise ValueError("the bound-split policy needs every module's distortions (GroupScores.distortion; "
                             "with residual channels, the criterion's residual_distortion)")
        self.total = float(sum(m.cum_macs[-1] for m in modules))
        # every combination of prefixes of the modules other than the MLP (the heads; with residual
        # channels, a (heads, residual) grid), reduced once to its Pareto frontier: a combination
        # that removes no more MACs than another, at more distortion, is never the best choice
        others = [modules[0]] + modules[2:]
        macs, distortion = others[0].cum_macs, others[0].cum_distortion
        for m in others[1:]:
            macs = macs[:, None] + m.cum_macs[None, :]
            distortion = distortion[:, None] + m.cum_distortion[None, :]
        shape = macs.shape
        macs, distortion = macs.reshape(-1), distortion.reshape(-1)
        order = torch.argsort(macs, descending=True, stable=True)
        least_so_far = torch.cummin(distortion[order], 0).values  # least distortion at >= these MACs
        keep = torch.ones(len(order), dtype=torch.bool)
        keep[1:] = distortion[order][1:] < least_so_far[:-1]
        chosen = order[keep]
        self.front_macs, self.front_distortion = macs[chosen], distortion[chosen]
        self.front_prefixes = [[int(i) for i in torch.unravel_index(c, shape)] for c in chosen]

    def removed(self, q):
        mlp = self.modules[1]
        need = (q * self.total - self.front_macs).clamp(min=0.0)
        j = torch.searchsorted(mlp.cum_macs, need - 1e-6)  # the shortest MLP prefix covering the rest
        last = len(mlp.cum_macs) - 1
        objective = self.front_distortion + mlp.cum_distortion[j.clamp(max=last)]
        objective[j > last] = math.inf
        at = int(torch.argmin(objective))
        prefixes = self.front_prefixes[at]
        return [prefixes[0], int(j[at].clamp(max=last))] + prefixes[1:]


class ModuleAwarePerMac(ModuleAware):
    """module-aware on each head's and MLP channel's score per MAC. Residual channels keep their
    plain scores: they form a module of their own, and a stage's channels all cost the same."""

    summary = ModuleAware.summary + ", by score per MAC"
    per_mac = ("attention", "mlp")


class OneModulePerMac(OneModule):
    """one-module on every group's score per MAC, residual channels included: pooled, all groups
    must be in the same units."""

    summary = OneModule.summary + ", by score per MAC"
    per_mac = MODULE_NAMES


class BoundSplitPerMac(BoundSplit):
    """bound-split with each module's removals ordered by score per MAC."""

    summary = "each module by score per MAC; DIMAP's squared bound splits the MACs between them"
    per_mac = MODULE_NAMES


POLICIES: dict[str, type[Policy]] = {
    "module-aware": ModuleAware, "one-module": OneModule, "uniform": Uniform, "distortion": DistortionBudget,
    "bound-split": BoundSplit, "module-aware-per-mac": ModuleAwarePerMac, "one-module-per-mac": OneModulePerMac,
    "bound-split-per-mac": BoundSplitPerMac, "one-module-per-ms": PerMillisecond}
"""Every selection policy by name (`--policy`)."""


def _round_width(width: int, full: int, multiple: int, floor: int) -> int:
    if multiple <= 1 or width == 0:  # a branch removed whole stays removed
        return width
    rounded = max(multiple, int(round(width / multiple)) * multiple)
    return min(full, max(rounded, floor))


def select_to_budget(
    scores: GroupScores,
    costs: CostModel,
    head_weights: list[int],
    channel_weights: list[int],
    target_macs: int,
    *,
    policy: str = "module-aware",
    min_heads: int = 1,
    min_mlp: int = 8,
    round_to: int = 1,
    head_dims: list[int] | None = None,
    residual_scores: list[torch.Tensor] | None = None,
    residual_distortion: list[torch.Tensor] | None = None,
    residual_weights: list[int] | None = None,
    min_embed: int = 16,
    tolerance: float = 0.01,
    cost: Callable[..., float] | None = None,
    target_cost: float | None = None,
    latency=None,
) -> Selection:
    """Find the policy's knob whose pruned model has MACs closest to `target_macs`.

    `head_weights[b]` / `channel_weights[b]`: weights one head / one MLP channel of block b owns
    (the paper's equal-fraction-per-module rule, and the reported removed fractions).
    `policy`: a name in `POLICIES` ('module-aware' by default); the bound-split policies read
    `scores.distortion`.
    With `residual_scores` (one tensor per stage) and `residual_weights` (weights one residual
    channel of each stage owns), residual channels are a third module; every stage keeps at
    least `min_embed` of them. `round_to` rounds kept MLP widths, residual widths and the total
    width of kept heads (heads x `head_dims[b]`) to multiples of it.

    With `cost(heads, widths[, residual])` (e.g. `latency.LatencyModel.predict`, non-increasing
    as groups go) and `target_cost`, the search aims at that cost instead of the MACs;
    `target_macs` is then ignored and reported as the MACs of the plan found. `latency` (a
    `latency.LatencyModel`): its `predict` is the cost when `cost` is not given, and the per-ms
    policy ranks by its table."""
    kind = POLICIES[policy]
    distortion = scores.distortion or GroupScores(heads=None, mlp=None)

    def module(name, values, weights, floor, macs, module_distortion):
        if name in kind.per_mac:
            values = [v / max(m, 1) for v, m in zip(values, macs)]
        return _Module(values, weights, floor, macs, module_distortion)

    modules = [module("attention", scores.heads, head_weights, min_heads, [b.macs_per_head for b in costs.blocks],
                      distortion.heads),
               module("mlp", scores.mlp, channel_weights, min_mlp, [b.macs_per_channel for b in costs.blocks],
                      distortion.mlp)]
    floors = [min_heads, min_mlp]
    if residual_scores is not None:
        modules.append(module("residual", residual_scores, residual_weights, min_embed,
                              residual_channel_macs(costs), residual_distortion))
        floors.append(min_embed)
    rule = kind(modules, floors, latency=latency) if kind.needs_latency else kind(modules, floors)
    if cost is None and latency is not None:
        cost = latency.predict
    head_dims = head_dims or [1] * len(head_weights)
    steps = [[round_to // math.gcd(round_to, d) for d in head_dims]] + \
        [[round_to] * len(m.sizes) for m in modules[1:]]

    def rounded(counts: list[list[int]]) -> list[list[int]]:
        return [[_round_width(c, full, step, min(floor, full)) for c, full, step in zip(cs, m.sizes, st)]
                for cs, m, st, floor in zip(counts, modules, steps, floors)]

    def plan_for(q: float) -> Plan:
        kept = []
        for m, sets, widths in zip(modules, rule.kept(q), rounded(rule.kept_counts(q))):
            kept.append([sorted(k) if w == len(k) else sorted(m.ranked[b][:w])
                         for b, (k, w) in enumerate(zip(sets, widths))])
        return Plan([bc.name for bc in costs.blocks], kept[0], kept[1], kept[2] if len(kept) > 2 else None)

    measure = (lambda counts: costs.macs(*counts)) if cost is None else (lambda counts: cost(*counts))
    target = target_macs if cost is None else target_cost

    def cost_for(q: float) -> float:
        return measure(rounded(rule.kept_counts(q)))

    original_cost = measure([m.sizes for m in modules])
    lo, hi = 0.0, 1.0
    if cost_for(lo) <= target:
        best = lo
    elif cost_for(hi) > target:
        best = hi
    else:
        for _ in range(60):  # the cost is non-increasing in q: bisect for the first q under target
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if cost_for(mid) <= target else (mid, hi)
        best = min((lo, hi), key=lambda q: (abs(cost_for(q) - target), q))
    if abs(cost_for(best) - target) > tolerance * original_cost:
        # off target: the cost need not be monotone in q (bound-split's shares move as q grows, and
        # a latency model weighs heads and channels differently), so scan the knob before giving up
        scan = [k / 400 for k in range(401)] + [best, hi]
        best = min(scan, key=lambda q: (abs(cost_for(q) - target), q))
    plan = plan_for(best)
    original = costs.macs(*[m.sizes for m in modules])
    achieved = costs.macs(plan.head_counts, plan.mlp_widths, plan.residual_widths)
    achieved_cost = measure([plan.head_counts, plan.mlp_widths] + ([plan.residual_widths] if len(modules) > 2 else []))
    on_target = abs(achieved_cost - target) <= tolerance * original_cost
    note = None
    if not on_target:
        what = "the MACs" if cost is None else "the predicted latency"
        note = (f"target {target / original_cost:.3f} of {what} is not reachable within +-{tolerance} "
                f"with these constraints (policy {policy}, min heads {min_heads}, min MLP {min_mlp}, "
                f"round-to {round_to}); nearest reachable: {achieved_cost / original_cost:.3f}")
    kept_counts = [plan.head_counts, plan.mlp_widths, plan.residual_widths]
    weights = [head_weights, channel_weights, residual_weights]
    removed = {name: 1 - sum(c * w for c, w in zip(kept_counts[i], weights[i])) / modules[i].total_weight
               for i, name in enumerate(MODULE_NAMES[:len(modules)])}
    thresholds = dict(zip(MODULE_NAMES, rule.thresholds(best)))
    if issubclass(kind, Uniform):
        thresholds["uniform_ratio"] = best
    return Selection(
        plan=plan,
        policy=policy,
        removed_weight_fraction=removed,
        thresholds=thresholds,
        target_macs=target_macs if cost is None else achieved,
        achieved_macs=achieved,
        original_macs=original,
        target_cost=None if cost is None else target,
        achieved_cost=None if cost is None else achieved_cost,
        original_cost=None if cost is None else original_cost,
        floor_cost=None if cost is None else cost_for(1.0),
        on_target=on_target,
        note=note,
    )
