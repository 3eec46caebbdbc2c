"""docs/cli.md is generated from the commands' parsers and options: it cannot drift from them."""
from pathlib import Path

from dimap_struct.cli import reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_committed_cli_reference_is_up_to_date():
    assert DOC.read_text() == reference.render(), (
        f"docs/cli.md is out of date with the commands' options: run `{reference.REGENERATE}` and commit it")


def test_every_flag_of_every_command_is_listed():
    text = reference.render()
    for prog, module, _ in reference.COMMANDS:
        parser = __import__(f"dimap_struct.cli.{module}", fromlist=["build_parser"]).build_parser()
        section = text.split(f"## {prog}\n", 1)[1].split("\n## ", 1)[0]
        for arg in parser.arguments:
            if arg.kwargs.get("action") != "help":
                assert any(f"`{n}" in section or f", {n}" in section for n in arg.names if n.startswith("-")) \
                    or not arg.names[0].startswith("-"), (prog, arg.names)


def test_usage_does_not_depend_on_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = reference.render()
    monkeypatch.setenv("COLUMNS", "250")
    assert reference.render() == narrow


def test_check_mode_says_how_to_regenerate(tmp_path, capsys):
    stale = tmp_path / "cli.md"
    stale.write_text("old\n")
    assert reference.main(["--check", str(stale)]) == 1
    assert reference.REGENERATE in capsys.readouterr().err
    assert reference.main(["--check", str(DOC)]) == 0


def test_the_readme_is_a_guide_of_at_most_300_lines():
    """README.md is the user guide (issue 28): results and history live in docs/."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert " I " not in readme and "session" not in readme.lower()
