"""Stage 4, select: module-aware thresholds that hit a MACs budget.

Modules (DIMAP.md section 4): all attention heads of the model form one module, all MLP
channels another. Within a module, groups are ranked by score across every block and stage;
each module has one threshold. As in the paper, both modules lose the same fraction `p` of
their weights: a module's threshold is the score below which removing groups (lowest score
first) removes p of the module's weights. `p` is searched by bisection so that the pruned
model's MACs land on the target. Every block keeps its `min_heads` best heads and `min_mlp`
best channels; with `round_to > 1`, kept MLP widths are rounded to the nearest multiple.

Baselines use other policies over the same search (a knob q in [0, 1], more pruning as it
grows): `one-module` ranks heads and channels together under one threshold (the paper's
"model as module" ablation) and `uniform` removes the same fraction of every block.
"""
from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass

import torch

from .costs import CostModel
from .criteria import GroupScores


@dataclass
class Plan:
    """Kept structure per block: sorted head indices and sorted MLP channel indices."""

    blocks: list[str]
    heads: list[list[int]]
    mlp: list[list[int]]

    @property
    def head_counts(self) -> list[int]:
        return [len(h) for h in self.heads]

    @property
    def mlp_widths(self) -> list[int]:
        return [len(m) for m in self.mlp]

    def to_dict(self) -> dict:
        return asdict(self)


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
    """Achieved MACs within `tolerance` (a fraction of the original MACs) of the target."""
    note: str | None = None


class _Module:
    """One DIMAP module: all groups of one kind across blocks, ordered for removal."""

    def __init__(self, scores: list[torch.Tensor], weights_per_group: list[int], keep_at_least: int):
        self.sizes = [len(s) for s in scores]
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


class _Policy:
    """Maps a knob q in [0, 1] (more pruning as q grows) to kept heads / channels per block."""

    def __init__(self, heads: _Module, channels: _Module, min_heads: int, min_mlp: int):
        self.heads, self.channels = heads, channels
        self.min_heads, self.min_mlp = min_heads, min_mlp

    def removed(self, q: float) -> tuple[int, int]:
        """Groups removed from (heads, channels) modules in their removal order."""
        raise NotImplementedError

    def kept_counts(self, q: float) -> tuple[list[int], list[int]]:
        rh, rc = self.removed(q)
        return self.heads.kept_counts(rh), self.channels.kept_counts(rc)

    def kept(self, q: float) -> tuple[list[set[int]], list[set[int]]]:
        rh, rc = self.removed(q)
        return self.heads.kept(rh), self.channels.kept(rc)

    def thresholds(self, q: float) -> dict[str, float | None]:
        rh, rc = self.removed(q)
        return {"attention": self.heads.threshold(rh), "mlp": self.channels.threshold(rc)}


class ModuleAware(_Policy):
    """The paper's rule: each module loses the same fraction q of its weights, lowest score first."""

    def removed(self, q):
        return self.heads.removed_for_fraction(q), self.channels.removed_for_fraction(q)


class OneModule(_Policy):
    """Heads and channels ranked together: one threshold, the q-quantile of all candidate scores."""

    def __init__(self, *args):
        super().__init__(*args)
        self.all_scores = sorted(self.heads.score + self.channels.score)

    def removed(self, q):
        k = int(round(q * len(self.all_scores)))
        if k == 0:
            return 0, 0
        t = self.all_scores[k - 1]
        return self.heads.removed_below(t), self.channels.removed_below(t)


class Uniform(_Policy):
    """Every block removes the same fraction q of its heads and of its channels (best kept)."""

    def _counts(self, q: float) -> tuple[list[int], list[int]]:
        def keep(n: int, floor: int) -> int:
            return max(min(floor, n), n - int(round(q * n)))
        return ([keep(n, self.min_heads) for n in self.heads.sizes],
                [keep(n, self.min_mlp) for n in self.channels.sizes])

    def kept_counts(self, q):
        return self._counts(q)

    def kept(self, q):
        hc, cc = self._counts(q)
        return ([set(r[:k]) for r, k in zip(self.heads.ranked, hc)],
                [set(r[:k]) for r, k in zip(self.channels.ranked, cc)])

    def thresholds(self, q):
        return {"attention": None, "mlp": None, "uniform_ratio": q}


POLICIES: dict[str, type[_Policy]] = {"module-aware": ModuleAware, "one-module": OneModule, "uniform": Uniform}


def _round_width(width: int, full: int, multiple: int, floor: int) -> int:
    if multiple <= 1:
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
    tolerance: float = 0.01,
) -> Selection:
    """Find the policy's knob whose pruned model has MACs closest to `target_macs`.

    `head_weights[b]` / `channel_weights[b]`: weights one head / one MLP channel of block b owns
    (the paper's equal-fraction-per-module rule, and the reported removed fractions).
    `policy`: 'module-aware' (default), 'one-module' or 'uniform' (see `POLICIES`)."""
    heads = _Module(scores.heads, head_weights, min_heads)
    channels = _Module(scores.mlp, channel_weights, min_mlp)
    rule = POLICIES[policy](heads, channels, min_heads, min_mlp)

    def rounded(widths: list[int]) -> list[int]:
        return [_round_width(w, full, round_to, min(min_mlp, full)) for w, full in zip(widths, channels.sizes)]

    def plan_for(q: float) -> Plan:
        kept_heads, kept_channels = rule.kept(q)
        kept_mlp = [set(channels.ranked[b][:w]) if w != len(kept) else kept
                    for b, (kept, w) in enumerate(zip(kept_channels, rounded([len(k) for k in kept_channels])))]
        return Plan([bc.name for bc in costs.blocks], [sorted(k) for k in kept_heads], [sorted(k) for k in kept_mlp])

    def macs_for(q: float) -> int:
        h, w = rule.kept_counts(q)
        return costs.macs(h, rounded(w))

    original = costs.macs([b.num_heads for b in costs.blocks], [b.mlp_width for b in costs.blocks])
    lo, hi = 0.0, 1.0
    if macs_for(lo) <= target_macs:
        best = lo
    elif macs_for(hi) > target_macs:
        best = hi
    else:
        for _ in range(60):  # MACs(q) is non-increasing in q: bisect for the first q under target
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if macs_for(mid) <= target_macs else (mid, hi)
        best = min((lo, hi), key=lambda q: (abs(macs_for(q) - target_macs), q))
    plan = plan_for(best)
    achieved = costs.macs(plan.head_counts, plan.mlp_widths)
    on_target = abs(achieved - target_macs) <= tolerance * original
    note = None
    if not on_target:
        note = (f"target {target_macs / original:.3f} of the MACs is not reachable within +-{tolerance} "
                f"with these constraints (policy {policy}, min heads {min_heads}, min MLP {min_mlp}, "
                f"round-to {round_to}); nearest reachable: {achieved / original:.3f}")
    removed = {
        "attention": 1 - sum(h * w for h, w in zip(plan.head_counts, head_weights)) / heads.total_weight,
        "mlp": 1 - sum(m * w for m, w in zip(plan.mlp_widths, channel_weights)) / channels.total_weight,
    }
    return Selection(
        plan=plan,
        policy=policy,
        removed_weight_fraction=removed,
        thresholds=rule.thresholds(best),
        target_macs=target_macs,
        achieved_macs=achieved,
        original_macs=original,
        on_target=on_target,
        note=note,
    )
