"""Data comes from --data or $DIMAP_DATA only: no default path outside the package."""
from dimap_struct.cli import eval as cli_eval


def test_no_data_directory_is_one_line_and_exit_code_2(monkeypatch, capsys):
    monkeypatch.delenv("DIMAP_DATA", raising=False)
    assert cli_eval.main(["reference", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dimap-eval: error: no data directory: pass --data PATH or set DIMAP_DATA"]


def test_dimap_data_names_the_directory(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DIMAP_DATA", str(tmp_path / "nowhere"))
    assert cli_eval.main(["reference", "--quiet"]) == 2
    assert "data directory not found" in capsys.readouterr().err
