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
        """The model `to_dict` wrote, or ValueError when it cannot be one: every number finite,
        coefficients and sample timings >= 0, dense and unpruned latency > 0, fixed part >= 0,
        one coefficient per feature, widths > 0, and each block's stage one of the stages.
        (A cache entry is read by this; NaN coefficients once cut a model to NaN predictions.)"""
        try:
            stages = [StageLatency(**s) for s in data["stages"]]
            model = cls(**{**data, "stages": stages})
            model._check()
        except (TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"not a latency model ({type(err).__name__}: {err})") from None
        return model

    def _check(self) -> None:
        if not isinstance(self.key, dict) or not self.stages:
            raise ValueError("a latency model needs its key and at least one stage")
        for s, stage in enumerate(self.stages):
            if len(stage.coefficients) != len(FEATURES):
                raise ValueError(f"stage {s} has {len(stage.coefficients)} coefficients, not {len(FEATURES)}")
            _require(stage.coefficients, f"stage {s} coefficients", minimum=0.0)
            for sample in stage.samples:
                _require([sample["ms"]], f"stage {s} timings", minimum=0.0)
                _require([sample["heads"], sample["mlp"], sample["width"]], f"stage {s} timed widths", above=0)
        _require(self.stage_widths, "stage widths", above=0)
        if not all(isinstance(s, int) and 0 <= s < len(self.stages) for s in self.block_stages):
            raise ValueError(f"block stages {self.block_stages} are not all among the {len(self.stages)} stages")
        if len(self.stage_widths) != len(self.stages):
            raise ValueError(f"{len(self.stage_widths)} stage widths for {len(self.stages)} stages")
        _require([self.dense_ms, self.unpruned_ms], "dense and unpruned latency", above=0.0)
        _require([self.fixed_ms], "fixed latency", minimum=0.0)


def _require(values, what: str, minimum: float | None = None, above: float | None = None) -> None:
    """ValueError unless every value is a finite real number (bool excluded), >= `minimum`, > `above`."""
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"{what}: {v!r} is not a finite number")
        if (minimum is not None and v < minimum) or (above is not None and v <= above):
            raise ValueError(f"{what}: {v!r} is out of range")


def with_fixed_part(key: dict, stages: list[StageLatency], block_stages: list[int], stage_widths: list[int],
                    dense_heads: list[int], dense_widths: list[int], dense_ms: float) -> LatencyModel:
    """A LatencyModel whose fixed part makes it predict `dense_ms` for the unpruned model
    (never below zero: when the blocks' sum overshoots, the blocks alone are the model, and
    `unpruned_ms` records that sum)."""
    blocks_ms = LatencyModel(key, stages, block_stages, stage_widths, dense_ms, 0.0, 0.0).predict(dense_heads,
                                                                                                 dense_widths)
    return LatencyModel(key, stages, block_stages, stage_widths, dense_ms, max(0.0, dense_ms - blocks_ms),
                        max(dense_ms, blocks_ms))
