"""The criterion registry: a criterion is one `Criterion`, registered by the file that defines it.

A criterion maps a model's blocks to one score per group (higher = more important) and
declares everything the pipeline needs to know about it:

- `policy`: the selection rule it is meant for (`prune.select.POLICIES`);
- `uses_score_mode`: whether `--score` (DIMAP option A / B) changes it;
- `residual_score`: how it scores residual channels for `--prune-embed` (None: unsupported);
- `prepare`: a hook run on the model before scoring (data-driven criteria: a gradient pass
  over calibration images); its presence makes the criterion need `--calib-data`;
- `needs_stats`: the scores read the calibration statistics of one-shot recovery (the input
  Gram matrices of proj and fc2 over `--calib-images`), which also needs `--calib-data`.

Adding a criterion means adding one file to this package that calls `register` (and importing
it from `__init__`); the CLI's choices, the options' checks and the report read the registry.
See docs/method.md section 3.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...errors import UserError
from ...models.adapters import BlockSite, ResidualSite
from ..residual import channel_views
from ..scoring import channel_weight_views, head_weight_views
from ..select import GroupScores


@dataclass(frozen=True)
class ScoreContext:
    """What every scorer may read besides the blocks."""

    score_mode: str = "group"
    seed: int = 0
    costs: object | None = None
    """The `prune.costs.CostModel` of the unpruned model."""
    stats: dict | None = None
    """Calibration statistics of the unpruned model (`prune.calibration.collect_stats`), for
    criteria with `needs_stats`."""


@dataclass(frozen=True)
class Calibration:
    """What a `prepare` hook gets: calibration data and how much of it to use."""

    data: str
    data_config: dict
    batches: int
    seed: int = 0
    num_classes: int | None = None


Scorer = Callable[[list[BlockSite], ScoreContext], GroupScores]
ResidualScorer = Callable[[list[ResidualSite], ScoreContext], list[torch.Tensor]]


@dataclass(frozen=True)
class Criterion:
    name: str
    score: Scorer
    policy: str
    """Selection policy: 'module-aware', 'uniform', 'one-module', 'distortion' or 'bound-split' (see
    `prune.select`; 'bound-split' needs the scorer's `GroupScores.distortion`)."""
    summary: str
    uses_score_mode: bool = False
    residual_score: ResidualScorer | None = None
    prepare: Callable[[nn.Module, Calibration], None] | None = None
    cleanup: Callable[[nn.Module], None] | None = None
    """Undo what `prepare` left on the model (e.g. gradients) once scores are taken."""
    needs_stats: bool = False
    """Scores read the calibration statistics that recovery also uses (`ScoreContext.stats`)."""
    residual_distortion: ResidualScorer | None = None
    """For the 'bound-split' policy: each residual channel's energy fraction (its term of DIMAP's
    squared bound), beside `residual_score`, which orders the removals."""

    @property
    def needs_data(self) -> bool:
        return self.prepare is not None or self.needs_stats


CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add `criterion` to the registry (its name must be new)."""
    if criterion.name in CRITERIA:
        raise ValueError(f"criterion '{criterion.name}' is already registered")
    CRITERIA[criterion.name] = criterion
    return criterion


def unregister(name: str) -> None:
    CRITERIA.pop(name, None)


def criterion_names() -> list[str]:
    """Registered names, the default `dimap` first."""
    return sorted(CRITERIA, key=lambda name: name != "dimap")


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise UserError(f"unknown criterion '{name}'; choose from: {', '.join(criterion_names())}")
    return CRITERIA[name]


def score(criterion: str, blocks: list[BlockSite], **context) -> GroupScores:
    """Scores of `criterion` for `blocks`; `context`: score_mode, seed, costs (see ScoreContext)."""
    return get_criterion(criterion).score(blocks, ScoreContext(**context))


def per_group(blocks: list[BlockSite], reduce: Callable[[list[torch.Tensor]], torch.Tensor]) -> GroupScores:
    """Apply `reduce` to the per-layer (groups, n) weight views of every block's heads and MLP
    channels (`prune.scoring.head_weight_views` / `channel_weight_views`)."""
    return GroupScores(heads=[reduce(head_weight_views(b.attn)) for b in blocks],
                       mlp=[reduce(channel_weight_views(b.mlp)) for b in blocks])


def residual_by_views(reduce: Callable[[list[torch.Tensor]], torch.Tensor]) -> ResidualScorer:
    """A residual scorer applying a view score to each stage's per-layer channel views: the
    criteria that score any group from its weights score residual channels the same way."""
    def scorer(sites: list[ResidualSite], context: ScoreContext) -> list[torch.Tensor]:
        return [reduce(channel_views(s)) for s in sites]
    return scorer
