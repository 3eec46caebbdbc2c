"""A measured latency table, the cost that `--latency R` budgets instead of MACs
(docs/method.md section 11).

For each stage, the table holds what one block's attention branch costs with h heads kept, for
every h from 0 to the stage's head count, and what its MLP costs at a grid of kept widths from 0
to the full width (`mlp_grid`), in milliseconds, each measured inside a chain of the stage's
blocks (`deploy.latency_probe`), so that a call's overhead is not counted once per block. A branch
with nothing kept costs 0: it is removed (`models.lean.LeanBlock`). Between grid points the MLP's
cost is interpolated linearly. A plan costs `fixed_ms` (the model with every branch removed: stem,
merges, head, the blocks' constant adds, timed whole) plus `scale` times the sum over blocks of
attention(h) + mlp(m). `scale` makes the unpruned plan cost the measured dense model: blocks run
slower inside the whole model than in a short chain (on reference-cifar10 at batch 8 the dense
model took 1.18x its chains' sum beyond the skeleton), and that share shrinks with the blocks.

With narrower residual streams (`--prune-embed`) each branch's cost is scaled by c / C, the
fraction of the stage's width kept: qkv, proj and the MLP are linear in C; the attention matmuls
are not, so this is an estimate there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def mlp_grid(width: int, steps: int = 16) -> list[int]:
    """0, width/steps, ..., width (rounded, distinct): the MLP widths a stage is timed at. (A
    grid that also timed one channel predicted worse: docs/decisions.md, the policy under
    `--latency`.)"""
    return sorted({round(width * k / steps) for k in range(steps + 1)})


@dataclass
class StageTable:
    """One stage's branch costs (ms per block), non-decreasing, 0 for a removed branch."""

    heads_ms: list[float]
    """Index h: the attention branch with h heads kept (h = 0 .. the stage's heads)."""
    mlp_widths: list[int]
    """Increasing, from 0 to the full MLP width."""
    mlp_ms: list[float]
    """The MLP branch at each of `mlp_widths`."""
    width: int
    """The residual width the stage was timed at."""

    def block_ms(self, h: int, m: int, c: int) -> float:
        scale = c / self.width
        return scale * (self.heads_ms[h] + float(np.interp(m, self.mlp_widths, self.mlp_ms)))

    def head_saving(self, h: int, c: int | None = None) -> float:
        """ms saved by removing one head from a block holding `h` (> 0)."""
        return (self.heads_ms[h] - self.heads_ms[h - 1]) * (1.0 if c is None else c / self.width)

    def channel_saving(self, m: int, c: int | None = None) -> float:
        """ms saved by removing one MLP channel from a block holding `m` (> 0): the slope of the
        interpolation across that channel."""
        saved = float(np.interp(m, self.mlp_widths, self.mlp_ms) - np.interp(m - 1, self.mlp_widths, self.mlp_ms))
        return saved * (1.0 if c is None else c / self.width)


def monotone(values: list[float]) -> list[float]:
    """`values` made non-decreasing from 0 (a running maximum): timings are noisy, and the budget
    search needs a cost that never grows as groups go."""
    return [float(v) for v in np.maximum.accumulate(np.maximum(np.asarray(values, dtype=float), 0.0))]


@dataclass
class LatencyModel:
    """Predicted latency (ms) of a plan: `fixed_ms` plus each block's stage table."""

    key: dict
    """What the timings hold for: machine, runtime and version, family, architecture, input
    size, batch, threads (the cache key)."""
    stages: list[StageTable]
    block_stages: list[int]
    """Stage of each block, in `adapter.blocks()` order."""
    stage_widths: list[int]
    """Full residual width of each stage."""
    dense_ms: float
    """Measured latency of the unpruned (lean) model."""
    fixed_ms: float
    unpruned_ms: float
    """This model's prediction for the unpruned plan: `dense_ms`, or more when the blocks' branches
    sum to more than the whole model (the fixed part cannot go below zero). A `--latency` budget is
    a fraction of this, so that the target and the plans are on one scale."""
    scale: float = 1.0
    """What the blocks' table costs are multiplied by inside the whole model."""

    def predict(self, heads: list[int], widths: list[int], residual: list[int] | None = None) -> float:
        c = residual if residual is not None else self.stage_widths
        return self.fixed_ms + self.scale * sum(self.stages[s].block_ms(h, m, c[s])
                                                for s, h, m in zip(self.block_stages, heads, widths))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyModel":
        """The model `to_dict` wrote, or ValueError when it cannot be one: every number finite,
        timings >= 0 and non-decreasing from 0, MLP widths increasing from 0, dense and unpruned
        latency > 0, fixed part >= 0, and each block's stage one of the stages. (A cache entry
        is read by this; NaN coefficients once cut a model to NaN predictions.)"""
        try:
            stages = [StageTable(**s) for s in data["stages"]]
            model = cls(**{**data, "stages": stages})
            model._check()
        except (TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"not a latency model ({type(err).__name__}: {err})") from None
        return model

    def _check(self) -> None:
        if not isinstance(self.key, dict) or not self.stages:
            raise ValueError("a latency model needs its key and at least one stage")
        for s, stage in enumerate(self.stages):
            for what, values in (("attention", stage.heads_ms), ("MLP", stage.mlp_ms)):
                _require(values, f"stage {s} {what} timings", minimum=0.0)
                if not values or values[0] != 0 or any(b < a for a, b in zip(values, values[1:])):
                    raise ValueError(f"stage {s} {what} timings do not rise from 0")
            _require(stage.mlp_widths, f"stage {s} MLP widths", minimum=0)
            if (len(stage.mlp_widths) != len(stage.mlp_ms) or stage.mlp_widths[0] != 0
                    or any(b <= a for a, b in zip(stage.mlp_widths, stage.mlp_widths[1:]))):
                raise ValueError(f"stage {s} MLP widths are not an increasing grid from 0 with one timing each")
            _require([stage.width], f"stage {s} width", above=0)
        _require(self.stage_widths, "stage widths", above=0)
        if not all(isinstance(s, int) and 0 <= s < len(self.stages) for s in self.block_stages):
            raise ValueError(f"block stages {self.block_stages} are not all among the {len(self.stages)} stages")
        if len(self.stage_widths) != len(self.stages):
            raise ValueError(f"{len(self.stage_widths)} stage widths for {len(self.stages)} stages")
        architecture = self.key.get("architecture")
        if architecture is not None:  # the entry must describe the model its key names
            blocks = [block for stage in architecture for block in stage]
            if len(blocks) != len(self.block_stages) or len(architecture) != len(self.stages):
                raise ValueError(f"{len(self.block_stages)} blocks in {len(self.stages)} stages, not the key's "
                                 f"{len(blocks)} in {len(architecture)}")
            for s, (stage, table) in enumerate(zip(architecture, self.stages)):
                if len(table.heads_ms) != stage[0][0] + 1 or table.mlp_widths[-1] != stage[0][1]:
                    raise ValueError(f"stage {s}'s table is not for {stage[0][0]} heads and an MLP of {stage[0][1]}")
        _require([self.dense_ms, self.unpruned_ms], "dense and unpruned latency", above=0.0)
        _require([self.fixed_ms], "fixed latency", minimum=0.0)
        _require([self.scale], "block scale", above=0.0)


def _require(values, what: str, minimum: float | None = None, above: float | None = None) -> None:
    """ValueError unless every value is a finite real number (bool excluded), >= `minimum`, > `above`."""
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"{what}: {v!r} is not a finite number")
        if (minimum is not None and v < minimum) or (above is not None and v <= above):
            raise ValueError(f"{what}: {v!r} is out of range")


def with_fixed_part(key: dict, stages: list[StageTable], block_stages: list[int], stage_widths: list[int],
                    dense_heads: list[int], dense_widths: list[int], dense_ms: float,
                    skeleton_ms: float | None = None) -> LatencyModel:
    """A LatencyModel that predicts `dense_ms` for the unpruned model. With `skeleton_ms` (the
    model with every branch removed, measured), that is the fixed part, and the blocks' costs are
    scaled to fill the rest (`scale`; at least 0.05, so a noisy skeleton cannot cancel the blocks).
    Without it, the fixed part is `dense_ms` minus the blocks' sum, never below zero: when the
    blocks overshoot, they alone are the model, and `unpruned_ms` records their sum."""
    blocks_ms = LatencyModel(key, stages, block_stages, stage_widths, dense_ms, 0.0, 0.0).predict(dense_heads,
                                                                                                 dense_widths)
    if skeleton_ms is None:
        return LatencyModel(key, stages, block_stages, stage_widths, dense_ms, max(0.0, dense_ms - blocks_ms),
                            max(dense_ms, blocks_ms))
    fixed = max(0.0, skeleton_ms)
    scale = max(0.05, (dense_ms - fixed) / blocks_ms) if blocks_ms > 0 else 1.0
    return LatencyModel(key, stages, block_stages, stage_widths, dense_ms, fixed, fixed + scale * blocks_ms, scale)
