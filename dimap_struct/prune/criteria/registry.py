"""The score registry: a score is one `Score`, registered by the file that defines it.

A score maps a model's blocks to one value per group (higher = more important) and declares
everything the pipeline needs to know about it:

- `uses_score_mode`: whether `--score` (DIMAP option A / B) changes it;
- `residual_score`: how it scores residual channels for `--prune-embed` (None: unsupported);
- `prepare`: a hook run on the model before scoring (data-driven scores: a gradient pass
  over calibration images); its presence makes the score need `--calib-data`;
- `needs_stats`: the values read the calibration statistics of one-shot recovery (the input
  Gram matrices of proj and fc2 over `--calib-images`), which also needs `--calib-data`.

How the scores become a plan is the policy's part (`prune.select.POLICIES`); a criterion is a
score and a policy (`aliases`). Adding a score means adding one file to this package that calls
`register` (and importing it from `__init__`); the CLI's choices, the options' checks and the
report read the registry. See docs/method.md section 3.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

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
    scores with `needs_stats`."""


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
class Score:
    name: str
    compute: Scorer
    summary: str
    uses_score_mode: bool = False
    residual_score: ResidualScorer | None = None
    prepare: Callable[[nn.Module, Calibration], None] | None = None
    cleanup: Callable[[nn.Module], None] | None = None
    """Undo what `prepare` left on the model (e.g. gradients) once scores are taken."""
    needs_stats: bool = False
    """Values read the calibration statistics that recovery also uses (`ScoreContext.stats`)."""

    @property
    def needs_data(self) -> bool:
        return self.prepare is not None or self.needs_stats


SCORES: dict[str, Score] = {}


def register(score: Score) -> Score:
    """Add `score` to the registry (its name must be new)."""
    if score.name in SCORES:
        raise ValueError(f"score '{score.name}' is already registered")
    SCORES[score.name] = score
    return score


def unregister(name: str) -> None:
    SCORES.pop(name, None)


def per_group(blocks: list[BlockSite], reduce: Callable[[list[torch.Tensor]], torch.Tensor]) -> GroupScores:
    """Apply `reduce` to the per-layer (groups, n) weight views of every block's heads and MLP
    channels (`prune.scoring.head_weight_views` / `channel_weight_views`)."""
    return GroupScores(heads=[reduce(head_weight_views(b.attn)) for b in blocks],
                       mlp=[reduce(channel_weight_views(b.mlp)) for b in blocks])


def residual_by_views(reduce: Callable[[list[torch.Tensor]], torch.Tensor]) -> ResidualScorer:
    """A residual scorer applying a view score to each stage's per-layer channel views: the
    scores that rate any group from its weights rate residual channels the same way."""
    def scorer(sites: list[ResidualSite], context: ScoreContext) -> list[torch.Tensor]:
        return [reduce(channel_views(s)) for s in sites]
    return scorer
