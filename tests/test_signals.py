"""Signals and publishing: SIGTERM / SIGHUP / SIGINT at random moments of a real export leave
either nothing or both complete files; two runs racing for one output never replace each other's
file; the publish step is all-or-nothing."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from dimap_struct import files
from dimap_struct.errors import UserError

HARNESS = Path(__file__).with_name("sigterm_harness.py")
EXIT = {"TERM": 143, "HUP": 129, "INT": 130}


def test_signals_at_random_moments_leave_nothing_or_both_complete_files(tmp_path):
    seed = random.SystemRandom().randrange(10**6)
    names = ["TERM"] * 4 + ["HUP", "INT"]  # half of the delays fall while files are being written
    proc = subprocess.run([sys.executable, str(HARNESS), str(tmp_path), ",".join(names), str(seed)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout)
    during_export = 0
    for trial in run["trials"]:
        where = f"seed {seed}, trial {trial}"
        left = sorted(p.name for p in Path(trial["dir"]).iterdir())
        assert left in ([], ["out.json", "out.onnx"]), where
        # -n: the signal's default action, before the command installed its handlers (nothing written yet)
        code, signum = trial["exit_code"], EXIT[trial["signal"][3:]] - 128
        assert code in (0, 128 + signum) or (code == -signum and not left), where
        if left:
            onnx.checker.check_model(str(Path(trial["dir"]) / "out.onnx"))
            report = json.loads((Path(trial["dir"]) / "out.json").read_text())
            assert report["onnx"]["bytes"] == (Path(trial["dir"]) / "out.onnx").stat().st_size, where
        elif trial["temps_at_kill"]:
            during_export += 1
            assert trial["exit_code"] == EXIT[trial["signal"][3:]], where
    # the test means something only if signals really landed while files were being written
    assert during_export >= 3, f"seed {seed}: only {during_export} signals arrived during the export"  # harness MIN_DURING


def _temp(directory: Path, text: str) -> Path:
    path = directory / f"{files.TEMP_PREFIX}{text}"
    path.write_text(text)
    return path


def test_publish_never_replaces_a_file_that_appeared(tmp_path):
    """The second of two runs racing for one output: its early check passed, but the name is taken
    by the time it publishes. Nothing of the first run's files is touched, the second leaves nothing."""
    onnx_path, json_path = tmp_path / "m.onnx", tmp_path / "m.json"
    onnx_path.write_text("first run")
    json_path.write_text("first run")
    pairs = [(_temp(tmp_path, "second.onnx"), onnx_path), (_temp(tmp_path, "second.json"), json_path)]
    with pytest.raises(UserError, match="appeared while this command ran"):
        files.publish(pairs, force=False)
    assert onnx_path.read_text() == json_path.read_text() == "first run"


def test_publish_is_all_or_nothing(tmp_path):
    """The ONNX file is published, then the report's name turns out to be taken: the ONNX file is
    withdrawn again, so there is never one of the pair without the other."""
    onnx_path, json_path = tmp_path / "m.onnx", tmp_path / "m.json"
    json_path.write_text("someone else's")
    pairs = [(_temp(tmp_path, "a.onnx"), onnx_path), (_temp(tmp_path, "a.json"), json_path)]
    with pytest.raises(UserError):
        files.publish(pairs, force=False)
    assert not onnx_path.exists() and json_path.read_text() == "someone else's"


def test_staged_removes_temporaries_on_any_exit(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with files.staged([tmp_path / "a.onnx", tmp_path / "a.json"], force=False) as temps:
            for t in temps:
                t.write_text("partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with files.staged([tmp_path / "a.onnx"], force=False) as (temp,):
        temp.write_text("done")
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]
    assert oct((tmp_path / "a.onnx").stat().st_mode & 0o777) != "0o600"


def test_full_disk_names_the_output_and_leaves_nothing(tmp_path, capfd):
    """A real write error: the file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored, so write()
    fails with EFBIG the way a full disk fails with ENOSPC), set in this process around the
    command's own entry point (a process less to start) and lifted again."""
    import resource
    import signal

    from dimap_struct.cli.compress import main

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.getsignal(signal.SIGXFSZ)
    try:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, limits[1]))  # the soft limit only: it can be raised back
        code = main(["reference", "--flops", "0.5", "-o", str(tmp_path / "m.onnx")])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    err = capfd.readouterr().err
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"cannot write {tmp_path / 'm.onnx'}" in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_no_space_error_is_a_user_error(tmp_path):
    import errno

    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'x.onnx'}: No space left on device"):
        with files.staged([tmp_path / "x.onnx"], force=False) as (temp,):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temp))
    assert list(tmp_path.iterdir()) == []


def test_force_restores_the_earlier_pair_if_publishing_fails(tmp_path):
    """--force replaces an existing pair only as a whole: when the report cannot be placed (its
    name became a directory), the ONNX file published a moment earlier is withdrawn and the
    earlier ONNX file comes back."""
    onnx_path, json_path = tmp_path / "m.onnx", tmp_path / "m.json"
    onnx_path.write_text("earlier model")
    json_path.mkdir()
    pairs = [(_temp(tmp_path, "new.onnx"), onnx_path), (_temp(tmp_path, "new.json"), json_path)]
    with pytest.raises(UserError, match="is a directory"):
        files.publish(pairs, force=True)
    assert onnx_path.read_text() == "earlier model"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(files.TEMP_PREFIX) and "new" not in p.name]


def test_a_signal_a_library_turned_into_another_exception_still_exits_128_plus_n(capsys):
    """SIGTERM early in a command can land inside library code (an import) that re-raises it as
    another exception; the exit code is still 143, not an internal error's 1."""
    import argparse
    import signal

    from dimap_struct.cli.common import run_command

    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt as err:
            raise RuntimeError("library wrapped it") from err
        return 0

    code = run_command("prog", argparse.Namespace(quiet=True, debug=False), run)
    assert code == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err
