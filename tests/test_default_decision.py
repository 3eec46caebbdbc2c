"""The default criterion's rule is decided by a measurement (benchmarks/decide.py) and declared
once in the package (`prune.criteria.DEFAULT_RULE`): the decision rule, applied to the committed
measurements, must pick that rule, and `dimap` must stand for it."""
import json
from pathlib import Path

from benchmarks import decide
from dimap_struct.prune.criteria import ALIASES, DEFAULT_RULE, get_criterion

ROOT = Path(__file__).resolve().parents[1]
DECISION = ROOT / "benchmarks" / "results" / "decision.json"


def test_the_decision_rule_on_the_committed_measurements_picks_the_default_rule():
    committed = json.loads(DECISION.read_text())
    results = [json.loads((ROOT / source).read_text()) for source in committed["sources"]]
    speed = committed["speed"]
    run = None if speed is None else json.loads((ROOT / speed["source"]).read_text())
    decision, _ = decide.apply_rule(results, run, *([] if speed is None else [speed["floor"]]))
    assert decision["winner"] == committed["winner"], "benchmarks/results/decision.json is not decide.py's output"
    assert decision["winner"] == DEFAULT_RULE, (
        f"the decision rule picks {decision['winner']}, but DEFAULT_RULE in "
        f"dimap_struct/prune/criteria/aliases.py is {DEFAULT_RULE}: update the constant (or the decision)")


def test_dimap_is_the_default_rule_under_another_name():
    assert ALIASES["dimap"] == ALIASES[DEFAULT_RULE]
    default, rule = get_criterion("dimap"), get_criterion(DEFAULT_RULE)
    assert default.score is rule.score and default.policy == rule.policy
