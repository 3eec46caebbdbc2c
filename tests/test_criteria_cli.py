"""Criteria on the command line: choices from the registries, refusals in one line, --plot / --compare."""
import pytest

from dimap_struct.cli import compress as cli
from dimap_struct.prune.criteria import ALIASES, SCORES, Score, criterion_names, register, unregister
from dimap_struct.prune.select import POLICIES


def _help(capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no name is wrapped at its hyphen
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _listed(text: str, flag: str = "--criterion") -> list[str]:
    (line,) = [line for line in text.splitlines() if line.strip().startswith(flag)]
    listed = line.split("one of:", 1)[1].split("(default", 1)[0]
    return [name.strip() for name in listed.split(",")]


def test_cli_names_every_criterion_and_policy(capsys, monkeypatch):
    text = _help(capsys, monkeypatch)
    assert _listed(text) == criterion_names()
    assert criterion_names()[0] == "dimap" and set(criterion_names()) == set(ALIASES) | set(SCORES)
    assert _listed(text, "--policy") == list(POLICIES)


def test_every_alias_names_a_registered_score_and_policy():
    for name, (score, policy) in ALIASES.items():
        assert score in SCORES and policy in POLICIES, name
    # a score under an alias's name is the alias's own score, or the name could not reach it
    assert all(ALIASES[name][0] == name for name in set(SCORES) & set(ALIASES))


def test_cli_choices_follow_the_registry(capsys, monkeypatch):
    """A newly registered score is offered by the CLI; unregistered, it is gone again."""
    register(Score("test-only", SCORES["lamp"].compute, "a registry test"))
    try:
        assert "test-only" in _listed(_help(capsys, monkeypatch))
    finally:
        unregister("test-only")
    assert "test-only" not in _listed(_help(capsys, monkeypatch))


def _err(capsys, *args):
    code = cli.main(list(args))
    return code, capsys.readouterr().err.strip()


def test_cli_refusals(capsys):
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--criterion", "magnitude")
    assert code == 2 and ", ".join(criterion_names()) in err and len(err.splitlines()) == 1
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--criterion", "taylor")
    assert code == 2 and "--calib-data" in err and len(err.splitlines()) == 1
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--policy", "global")
    assert code == 2 and ", ".join(POLICIES) in err and len(err.splitlines()) == 1
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--criterion", "l1", "--score", "weight")
    assert code == 2 and "--score" in err
    for extra in (["--round-to", "8"], ["--criterion", "l1"], ["--min-mlp", "16"], ["--policy", "uniform"]):
        code, err = _err(capsys, "swin_t", "--no-pretrained", "--granularity", "weight", *extra)
        assert code == 2 and "only apply to structured" in err, extra
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--params", "0.5")
    assert code == 2 and "--granularity weight" in err
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--granularity", "weight", "--params", "2")
    assert code == 2 and "--params" in err


def test_cli_report_names_criterion_and_plots(capsys, tmp_path):
    png = tmp_path / "blocks.png"
    code = cli.main(["swin_t", "--no-pretrained", "--criterion", "l2", "--plot", str(png), "--compare", "dimap",
                     "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "l2: group L2 norm" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.png"]
