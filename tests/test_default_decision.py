"""The default criterion's rule is decided by a measurement (benchmarks/decide.py) and declared
once in the package (`prune.criteria.dimap.DEFAULT_RULE`): the committed decision and the constant
must name the same rule."""
import json
from pathlib import Path

from dimap_struct.prune.criteria import CRITERIA
from dimap_struct.prune.criteria.dimap import DEFAULT_RULE

DECISION = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "decision.json"


def test_committed_decision_names_the_default_rule():
    winner = json.loads(DECISION.read_text())["winner"]
    assert winner == DEFAULT_RULE, (
        f"benchmarks/results/decision.json picks {winner}, but DEFAULT_RULE in "
        f"dimap_struct/prune/criteria/dimap.py is {DEFAULT_RULE}: update the constant (or the decision)")


def test_dimap_is_the_default_rule_under_another_name():
    default, rule = CRITERIA["dimap"], CRITERIA[DEFAULT_RULE]
    assert default.score is rule.score and default.policy == rule.policy
