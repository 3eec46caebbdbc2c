"""A per-block latency model, the cost that `--latency R` budgets instead of MACs
(docs/method.md section 11).

One block of stage s with h kept heads, m kept MLP channels and residual width c costs

    t_s(h, m, c) = k0 + k1*c + k2*h + k3*h*c + k4*m*c   (milliseconds)

(k2*h: the attention matmuls, which do not depend on c; k3*h*c: qkv and proj; k4*m*c: the MLP;
k0 + k1*c: norms, adds, the token gather). The coefficients of each stage are fitted by least
squares to the timed latencies of a few widths (`deploy.latency_probe`). The model's latency is
a fixed part (stem, merges, head: the measured dense latency minus the dense blocks' sum, floored
at zero) plus the sum over blocks. A budget is a fraction of the model's own prediction for the
unpruned plan (`LatencyModel.unpruned_ms`). `select.select_to_budget` searches on it exactly as it
searches on MACs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

FEATURES = ("1", "c", "h", "h*c", "m*c")


def features(h: int, m: int, c: int) -> list[float]:
    return [1.0, float(c), float(h), float(h * c), float(m * c)]


@dataclass
class StageLatency:
    """The fitted coefficients of one stage (ms, in FEATURES order) and the timings behind them."""

    coefficients: list[float]
    samples: list[dict] = field(default_factory=list)
    """{"heads", "mlp", "width", "ms"} per timed configuration."""

    def block_ms(self, h: int, m: int, c: int) -> float:
        return float(np.dot(self.coefficients, features(h, m, c)))


def fit_stage(samples: list[dict]) -> StageLatency:
    """Least-squares fit of t = k . features(h, m, c) to `samples` with every k >= 0 (at least
    len(FEATURES) samples spanning h, m and c, else the fit is underdetermined: ValueError).

    Non-negative so that a block never gets slower as it loses heads or channels (the budget
    search needs a monotone cost). numpy has no NNLS and scipy is not a dependency, so this is
    a greedy active-set heuristic, not exact NNLS: while a coefficient is negative, the most
    negative one is fixed at zero and the others refitted."""
    if len(samples) < len(FEATURES):
        raise ValueError(f"{len(samples)} timings cannot fit {len(FEATURES)} coefficients")
    a = np.array([features(s["heads"], s["mlp"], s["width"]) for s in samples])
    b = np.array([s["ms"] for s in samples])
    if np.linalg.matrix_rank(a) < len(FEATURES):
        raise ValueError("the timed widths do not vary heads, MLP width and residual width independently")
    active = list(range(len(FEATURES)))
    coefficients = np.zeros(len(FEATURES))
    while active:
        fitted, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (fitted >= 0).all():
            coefficients[active] = fitted
            break
        active.pop(int(np.argmin(fitted)))
    return StageLatency([float(k) for k in coefficients], list(samples))


@dataclass
class LatencyModel:
    """Predicted latency (ms) of a plan: `fixed_ms` plus each block's stage model."""

    key: dict
    """What the timings hold for: machine, runtime and version, family, architecture, input
    size, batch, threads (the cache key)."""
    stages: list[StageLatency]
    block_stages: list[int]
    """Stage of each block, in `adapter.blocks()` order."""
    stage_widths: list[int]
    """Full residual width of each stage."""
    dense_ms: float
    """Measured latency of the unpruned (lean) model."""
    fixed_ms: float
    unpruned_ms: float
    """This model's prediction for the unpruned plan: `dense_ms`, or more when the blocks timed
    alone sum to more than the whole model (each block's own run carries a call overhead, and the
    fixed part cannot go below zero). A `--latency` budget is a fraction of this, so that the
    target and the plans are on one scale: a fraction of `dense_ms` landed 10-19% under target
    on swin_t/s/b."""

    def predict(self, heads: list[int], widths: list[int], residual: list[int] | None = None) -> float:
        c = residual if residual is not None else self.stage_widths
        return self.fixed_ms + sum(self.stages[s].block_ms(h, m, c[s])
                                   for s, h, m in zip(self.block_stages, heads, widths))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyModel":
        stages = [StageLatency(**s) for s in data["stages"]]
        return cls(**{**data, "stages": stages})


def with_fixed_part(key: dict, stages: list[StageLatency], block_stages: list[int], stage_widths: list[int],
                    dense_heads: list[int], dense_widths: list[int], dense_ms: float) -> LatencyModel:
    """A LatencyModel whose fixed part makes it predict `dense_ms` for the unpruned model
    (never below zero: when the blocks' sum overshoots, the blocks alone are the model, and
    `unpruned_ms` records that sum)."""
    blocks_ms = LatencyModel(key, stages, block_stages, stage_widths, dense_ms, 0.0, 0.0).predict(dense_heads,
                                                                                                 dense_widths)
    return LatencyModel(key, stages, block_stages, stage_widths, dense_ms, max(0.0, dense_ms - blocks_ms),
                        max(dense_ms, blocks_ms))
