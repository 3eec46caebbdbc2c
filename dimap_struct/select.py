"""Stage 4, select: module-aware thresholds that hit a MACs budget.

Modules (DIMAP.md section 4): all attention heads of the model form one module, all MLP
channels another. Within a module, groups are ranked by score across every block and stage;
each module has one threshold. As in the paper, both modules lose the same fraction `p` of
their weights: a module's threshold is the score below which removing groups (lowest score
first) removes p of the module's weights. `p` is searched by bisection so that the pruned
model's MACs land on the target. Every block keeps its `min_heads` best heads and `min_mlp`
best channels; with `round_to > 1`, kept MLP widths are rounded to the nearest multiple.
"""
from __future__ import annotations

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
    removed_weight_fraction: float
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
        blocks, idxs, vals, weights = [], [], [], []
        total = 0
        for b, (s, w) in enumerate(zip(scores, weights_per_group)):
            total += w * len(s)
            order = sorted(range(len(s)), key=lambda i: (-float(s[i]), i))
            for i in order[min(keep_at_least, len(s)):]:  # the best few of each block are protected
                blocks.append(b), idxs.append(i), vals.append(float(s[i])), weights.append(w)
        # removal order: lowest score first; ties by (block, index) so the order is deterministic
        order = sorted(range(len(vals)), key=lambda j: (vals[j], blocks[j], idxs[j]))
        self.block = [blocks[j] for j in order]
        self.block_tensor = torch.tensor(self.block, dtype=torch.long)
        self.index = [idxs[j] for j in order]
        self.score = [vals[j] for j in order]
        self.cum_weight = torch.cumsum(torch.tensor([weights[j] for j in order], dtype=torch.float64), 0)
        self.total_weight = total
        self.ranked = [sorted(range(len(s)), key=lambda i: (-float(s[i]), i)) for s in scores]

    def removed_count(self, p: float) -> int:
        """Groups removed when the module loses (at most) the fraction p of its weights."""
        return int(torch.searchsorted(self.cum_weight, p * self.total_weight + 1e-9, right=True))

    def kept_counts(self, p: float) -> list[int]:
        removed = torch.bincount(self.block_tensor[: self.removed_count(p)], minlength=len(self.sizes))
        return [n - int(r) for n, r in zip(self.sizes, removed)]

    def kept(self, p: float) -> list[set[int]]:
        kept = [set(range(n)) for n in self.sizes]
        for j in range(self.removed_count(p)):
            kept[self.block[j]].discard(self.index[j])
        return kept

    def threshold(self, p: float) -> float | None:
        k = self.removed_count(p)
        return self.score[k - 1] if k else None


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
    min_heads: int = 1,
    min_mlp: int = 8,
    round_to: int = 1,
    tolerance: float = 0.01,
) -> Selection:
    """Find the per-module thresholds whose pruned model has MACs closest to `target_macs`.

    `head_weights[b]` / `channel_weights[b]`: weights one head / one MLP channel of block b owns
    (used for the paper's equal-fraction-per-module rule)."""
    heads = _Module(scores.heads, head_weights, min_heads)
    channels = _Module(scores.mlp, channel_weights, min_mlp)

    def plan_for(p: float) -> Plan:
        kept_heads = heads.kept(p)
        kept_mlp = []
        for b, kept in enumerate(channels.kept(p)):
            full = channels.sizes[b]
            width = _round_width(len(kept), full, round_to, min(min_mlp, full))
            kept_mlp.append(set(channels.ranked[b][:width]) if width != len(kept) else kept)
        return Plan([bc.name for bc in costs.blocks], [sorted(k) for k in kept_heads], [sorted(k) for k in kept_mlp])

    def macs_for(p: float) -> int:
        widths = [_round_width(w, full, round_to, min(min_mlp, full))
                  for w, full in zip(channels.kept_counts(p), channels.sizes)]
        return costs.macs(heads.kept_counts(p), widths)

    original = costs.macs([b.num_heads for b in costs.blocks], [b.mlp_width for b in costs.blocks])
    lo, hi = 0.0, 1.0
    if macs_for(lo) <= target_macs:
        best = lo
    elif macs_for(hi) > target_macs:
        best = hi
    else:
        for _ in range(60):  # MACs(p) is non-increasing in p: bisect for the first p under target
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if macs_for(mid) <= target_macs else (mid, hi)
        best = min((lo, hi), key=lambda p: (abs(macs_for(p) - target_macs), p))
    plan = plan_for(best)
    achieved = costs.macs(plan.head_counts, plan.mlp_widths)
    on_target = abs(achieved - target_macs) <= tolerance * original
    note = None
    if not on_target:
        note = (f"target {target_macs / original:.3f} of the MACs is not reachable within +-{tolerance} "
                f"with these constraints (min heads {min_heads}, min MLP {min_mlp}, round-to {round_to}); "
                f"nearest reachable: {achieved / original:.3f}")
    return Selection(
        plan=plan,
        removed_weight_fraction=best,
        thresholds={"attention": heads.threshold(best), "mlp": channels.threshold(best)},
        target_macs=target_macs,
        achieved_macs=achieved,
        original_macs=original,
        on_target=on_target,
        note=note,
    )
