"""Criterion names: a criterion is a score (`registry.SCORES`) and a selection policy
(`prune.select.POLICIES`).

`--criterion NAME` takes a name of `ALIASES`, which stands for a score and a policy, or the name
of a score, which takes the default's policy unless it is also a name of `ALIASES` (`taylor`,
`l1`, `l2`, `random`); `--policy` replaces the policy either way. The
names a run typed, the score and the policy all go into its report. See docs/method.md
sections 3-4.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import UserError
from ..select import POLICIES, GroupScores
from .registry import SCORES, Score, ScoreContext

DEFAULT_RULE = "dimap-cost-global"
"""The rule the default criterion `dimap` stands for, and the one place that says so: the winner
of the decision rule of docs/method.md section 4 (`benchmarks/decide.py`).
tests/test_default_decision.py applies that rule to the committed measurements and fails while
its winner and this constant differ."""

LATENCY_POLICY = "one-module-per-ms"
"""The policy of the default criterion `dimap` under `--latency` (without `--prune-embed`): the
default rule's ranking, with each group's score over the milliseconds it saves instead of its MACs
(docs/method.md section 11)."""

ALIASES: dict[str, tuple[str, str]] = {
    "dimap-cost-global": ("lamp", "one-module-per-mac"),
    "dimap-cost": ("lamp", "module-aware-per-mac"),
    "dimap-split": ("lamp", "bound-split-per-mac"),
    "dimap-paper": ("lamp", "module-aware"),
    "lamp-global": ("lamp", "one-module"),
    "dimap-bound": ("energy-fraction", "distortion"),
    "dimap-bound-sq": ("energy-fraction", "one-module-per-mac"),
    "dimap-calib": ("refit-error", "one-module-per-mac"),
    "taylor": ("taylor", "module-aware"),
    "l1": ("l1", "uniform"),
    "l2": ("l2", "uniform"),
    "magnitude-global": ("l2", "module-aware"),
    "random": ("random", "module-aware"),
}
ALIASES["dimap"] = ALIASES[DEFAULT_RULE]
"""Today's criterion names: name -> (score, policy). `dimap`, the default, is the rule the decision
picked."""

DISTORTION = "energy-fraction"
"""The score whose values the policies with `needs_distortion` weigh: each group's term of
DIMAP's squared bound."""


@dataclass(frozen=True)
class Criterion:
    """A criterion as a run uses it: the name typed, its score and its policy."""

    name: str
    score: Score
    policy: str

    @property
    def needs_data(self) -> bool:
        return self.score.needs_data

    @property
    def summary(self) -> str:
        return f"{self.score.summary}; {POLICIES[self.policy].summary}"

    def scores(self, blocks, context: ScoreContext) -> GroupScores:
        """The score's values for `blocks`, with the distortion the policy weighs, if it weighs one."""
        values = self.score.compute(blocks, context)
        if POLICIES[self.policy].needs_distortion:
            values = dataclasses.replace(values, distortion=SCORES[DISTORTION].compute(blocks, context))
        return values

    def residual_scores(self, sites, context: ScoreContext) -> tuple[list, list | None]:
        """(the score's values for residual channels, the distortion the policy weighs or None)."""
        distortion = SCORES[DISTORTION].residual_score(sites, context) \
            if POLICIES[self.policy].needs_distortion else None
        return self.score.residual_score(sites, context), distortion


def criterion_names() -> list[str]:
    """Every name `--criterion` takes, the default `dimap` first."""
    return sorted(set(ALIASES) | set(SCORES), key=lambda name: (name != "dimap", name))


def get_criterion(name: str, policy: str | None = None, *, latency: bool = False) -> Criterion:
    """The criterion `name` stands for, with `policy` instead of its own if given. `latency`: the
    run budgets a latency table whose groups the per-ms policy can rank (`--latency` without
    `--prune-embed`); the default criterion then takes `LATENCY_POLICY`."""
    if policy is None and latency and name == "dimap":
        policy = LATENCY_POLICY
    if name in ALIASES:
        score, own = ALIASES[name]
    elif name in SCORES:
        score, own = name, ALIASES["dimap"][1]
    else:
        raise UserError(f"unknown criterion '{name}'; choose from: {', '.join(criterion_names())}")
    policy = own if policy is None else policy
    if policy not in POLICIES:
        raise UserError(f"unknown policy '{policy}'; choose from: {', '.join(POLICIES)}")
    return Criterion(name, SCORES[score], policy)


def score(criterion: str, blocks, policy: str | None = None, **context) -> GroupScores:
    """What the policy of `criterion` ranks for `blocks` before any division by MACs (the score's
    values, with the distortion if the policy weighs one); `context`: score_mode, seed, costs,
    stats (see ScoreContext)."""
    return get_criterion(criterion, policy).scores(blocks, ScoreContext(**context))
