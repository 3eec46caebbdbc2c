"""A criterion is a score and a selection policy: every name of the alias table plans exactly as
its explicit `--criterion SCORE --policy POLICY` form, a bare score takes the default's policy, and
reports and recipes record the name typed, the score and the policy."""
import json

import pytest

import dimap_struct
from dimap_struct.pipeline import compression
from dimap_struct.cli import compress as cli
from dimap_struct.options import CompressOptions
from dimap_struct.prune.criteria import ALIASES, SCORES, get_criterion
from shared_data import mnist_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Planned(Exception):
    """Raised in place of the cut: the plan is what these tests compare, and cutting and
    verifying every alias twice would take most of a minute."""


def _stop_at_the_cut(net, adapter, plan, input_size):
    raise _Planned(plan)


@pytest.fixture(scope="module")
def reference():
    return dimap_struct.load_model("reference")


def _plan(model, **options):
    with pytest.raises(_Planned) as planned:
        dimap_struct.compress(model, 0.5, **options)
    return planned.value.args[0]


def test_every_alias_plans_as_its_score_and_policy(reference, monkeypatch):
    monkeypatch.setattr(compression, "cut", _stop_at_the_cut)
    data, compared = mnist_dir(), []
    for name, (score, policy) in ALIASES.items():
        options = {"prune_embed": SCORES[score].residual_score is not None}
        if SCORES[score].needs_data:
            if data is None:
                continue
            options.update(calib_data=data, calib_batches=1, calib_images=8, recovery="none")
        alias = _plan(reference, criterion=name, **options)
        explicit = _plan(reference, criterion=score, policy=policy, **options)
        assert (alias.heads, alias.mlp, alias.residual) == (explicit.heads, explicit.mlp, explicit.residual), name
        compared.append(name)
    assert len(compared) >= len(ALIASES) - 2  # the two data-driven ones need the shared MNIST


def test_a_bare_score_takes_the_default_policy_and_policy_replaces_any():
    assert get_criterion("lamp").policy == ALIASES["dimap"][1]
    assert get_criterion("l2").policy == "uniform"  # a score under an alias's name: the alias
    replaced = get_criterion("dimap-cost", "one-module")
    assert (replaced.name, replaced.score.name, replaced.policy) == ("dimap-cost", "lamp", "one-module")


def test_reports_and_recipes_record_the_name_the_score_and_the_policy(capsys):
    assert cli.main(["reference", "--criterion", "l2", "--policy", "module-aware", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["criterion"], report["score"], report["policy"]) == ("l2", "l2", "module-aware")
    assert report["selection"]["policy"] == report["recipe"]["policy"] == "module-aware"
    replayed = dimap_struct.compress("reference", CompressOptions.make(report["recipe"]))
    assert replayed.report.blocks[0].kept_heads == report["blocks"][0]["kept_heads"]
    assert [b.mlp_width for b in replayed.report.blocks] == [b["mlp_width"] for b in report["blocks"]]
    # a recipe written before --policy existed has no 'policy': its name expands as it did
    old = {k: v for k, v in replayed.report.recipe.items() if k != "policy"} | {"criterion": "magnitude-global"}
    again = dimap_struct.compress("reference", CompressOptions.make(old)).report
    assert (again.criterion, again.score, again.policy) == ("magnitude-global", "l2", "module-aware")
    assert [b.mlp_width for b in again.blocks] == [b["mlp_width"] for b in report["blocks"]]


def test_the_old_registry_name_still_reads_with_a_deprecation_warning():
    from dimap_struct.prune import criteria

    with pytest.warns(DeprecationWarning, match="get_criterion"):
        old = criteria.CRITERIA
    assert set(old) == set(ALIASES) and old["dimap-calib"].needs_data and not old["l1"].needs_data
