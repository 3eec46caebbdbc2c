"""Bad input: one clear line on stderr, exit code 2, nothing written. Checkpoints load."""
import re
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from dimap_struct.cli import compress as cli
from dimap_struct.models import load_model


def _run(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_user_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("done ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("flops", ["0", "-0.3", "1.5", "nan", "abc", "inf", ""])
def test_bad_ratio(capsys, tmp_path, flops):
    out = tmp_path / "m.onnx"
    code, _, err = _run(capsys, "swin_t", "--no-pretrained", "--flops", flops, "-o", str(out))
    _assert_user_error(code, err, "--flops")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module, args", [
    ("dimap_struct.cli.compress", ["swin_t", "--bogus"]),
    ("dimap_struct.cli.compress", ["swin_t", "--min-heads", "two"]),
    ("dimap_struct.cli.eval", ["reference", "--limit"]),
    ("dimap_struct.cli.bench", ["a.onnx", "--batch", "x"]),
    ("dimap_struct.cli.finetune", ["reference", "--epochs"]),
])
def test_bad_flags_one_line(capsys, module, args):
    """argparse's own errors (unknown flag, bad value, missing argument) follow the same rule."""
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(args)
    _, err = capsys.readouterr()
    _assert_user_error(exit_info.value.code, err, "error:", "--help")


def test_eval_without_model_one_line(capsys):
    """MODEL may come from --config, so its absence is a UserError after parsing: same rule."""
    from dimap_struct.cli import eval as cli_eval

    code = cli_eval.main([])
    _, err = capsys.readouterr()
    _assert_user_error(code, err, "error:", "MODEL")


def test_unknown_model_suggests(capsys):
    code, _, err = _run(capsys, "swin_tinny_patch4_window7_224", "--no-pretrained")
    _assert_user_error(code, err, "unknown model", "swin_tiny_patch4_window7_224")


def test_unsupported_family_names_supported(capsys):
    code, _, err = _run(capsys, "resnet18", "--no-pretrained")
    _assert_user_error(code, err, "not a supported", "Swin")


def test_output_directory_problems(capsys, tmp_path):
    code, _, err = _run(capsys, "swin_t", "--no-pretrained", "-o", str(tmp_path / "nope" / "m.onnx"))
    _assert_user_error(code, err, "does not exist")
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        code, _, err = _run(capsys, "swin_t", "--no-pretrained", "-o", str(locked / "m.onnx"))
        _assert_user_error(code, err, "not writable")
    code, _, err = _run(capsys, "swin_t", "--no-pretrained", "-o", str(tmp_path / "m.txt"))
    _assert_user_error(code, err, ".onnx")


def test_existing_output_needs_force(capsys, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    code, _, err = _run(capsys, "swin_t", "--no-pretrained", "-o", str(out))
    _assert_user_error(code, err, "already exists", "--force")
    assert out.read_bytes() == b"precious"


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(3)
    return load_model("swin_t", pretrained=False, seed=3).model.state_dict()


def test_checkpoint_problems(capsys, tmp_path, tiny_state):
    code, _, err = _run(capsys, "swin_t", "--checkpoint", str(tmp_path / "missing.pth"))
    _assert_user_error(code, err, "not found")

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all")
    code, _, err = _run(capsys, "swin_t", "--checkpoint", str(corrupt))
    _assert_user_error(code, err, "cannot read checkpoint")

    corrupt_st = tmp_path / "corrupt.safetensors"
    corrupt_st.write_bytes(b"garbage")
    code, _, err = _run(capsys, "swin_t", "--checkpoint", str(corrupt_st))
    _assert_user_error(code, err, "cannot read checkpoint")

    other = tmp_path / "swin_t.pth"
    torch.save({"model": tiny_state}, other)
    code, _, err = _run(capsys, "swin_s", "--checkpoint", str(other))
    _assert_user_error(code, err, "is for a model with depths (2, 2, 6, 2), width 96, not swin_small")

    if os.geteuid() != 0:
        unreadable = tmp_path / "unreadable.pth"
        torch.save(tiny_state, unreadable)
        unreadable.chmod(0)
        code, _, err = _run(capsys, "swin_t", "--checkpoint", str(unreadable))
        _assert_user_error(code, err, "not readable")


def test_checkpoint_formats_load_the_same_weights(tmp_path, tiny_state):
    files = {
        "bare.pth": lambda p: torch.save(tiny_state, p),
        "wrapped.pth": lambda p: torch.save({"model": tiny_state, "epoch": 300}, p),
        "wrapped.pt": lambda p: torch.save({"state_dict": tiny_state}, p),
        "weights.safetensors": lambda p: save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(p)),
    }
    for name, write in files.items():
        write(tmp_path / name)
        loaded = load_model("swin_t", checkpoint=tmp_path / name, seed=99)
        state = loaded.model.state_dict()
        assert state.keys() == tiny_state.keys(), name
        assert all(torch.equal(state[k], tiny_state[k]) for k in state), name
        assert "checkpoint" in loaded.weights


def test_offline_pretrained_says_what_to_do(tmp_path, capsys, monkeypatch):
    """HF_HUB_OFFLINE=1 (set as huggingface_hub reads it at import) and an empty Hub cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    code, _, err = _run(capsys, "swin_t", "--flops", "0.5", "-o", str(tmp_path / "m.onnx"), "--quiet")
    _assert_user_error(code, err, "--checkpoint", "--no-pretrained")
    assert not (tmp_path / "m.onnx").exists()


def test_unreachable_hub_fails_fast_in_one_line(tmp_path, capsys, monkeypatch):
    """Without HF_HUB_OFFLINE and without a network (the Hub's host does not resolve), the
    fetch fails at once with one line instead of huggingface_hub's retry log and back-off."""
    import socket
    import time

    from huggingface_hub import constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    start = time.perf_counter()
    code, _, err = _run(capsys, "swin_t", "--flops", "0.5", "-o", str(tmp_path / "m.onnx"), "--quiet")
    _assert_user_error(code, err, "could not fetch pretrained weights", "--no-pretrained")
    assert time.perf_counter() - start < 20
    assert constants.HF_HUB_OFFLINE is False  # the switch to offline mode lasts only for the fetch
    assert not (tmp_path / "m.onnx").exists()


def test_bad_structure_options(capsys):
    code, _, err = _run(capsys, "swin_t", "--no-pretrained", "--round-to", "0")
    _assert_user_error(code, err, "round-to")
    code, _, err = _run(capsys, "swin_t", "--no-pretrained", "--min-heads", "-1")
    _assert_user_error(code, err, "min-heads")


def test_finetune_progress_shows_steps_per_second_and_eta():
    """The fine-tuning bar on a terminal: loss, steps done of all, steps per second (and images per
    second when the batch is known), elapsed, ETA."""
    import io
    import time

    from rich.console import Console

    from dimap_struct.cli.finetune import _train_progress

    screen = io.StringIO()
    update = _train_progress(Console(file=screen, force_terminal=True, width=150))
    for step in range(1, 7):
        time.sleep(0.05)
        update(step, 6, 1.0 / step)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # the last frame is drawn when it ends
    assert re.search(r"fine-tuning \(loss 0\.167\) .* 6/6 \d+\.\d\d steps/s 0:00:0\d eta 0:00:00", text), text
    screen = io.StringIO()
    update = _train_progress(Console(file=screen, force_terminal=True, width=150), images_per_step=64)
    for step in range(1, 4):
        time.sleep(0.05)
        update(step, 3, 1.0)
    assert re.search(r"steps/s \(\d+ images/s\)", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()))
