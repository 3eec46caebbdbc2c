"""The reliability issue's second pass, beyond the bad-input table: the publish set, signals at
the edges of a command, stderr and stdout, running out of memory, training that diverges, the
loaders of `hf:` weights. Each test names its row (r1-r35) of the issue's table."""
import argparse
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dimap_struct import files, signals
from dimap_struct.cli.common import run_command
from dimap_struct.errors import UserError

ARGS = dict(quiet=True, debug=False)


def _publish_as(name: str, directory: str) -> None:
    """One run's publish of a set of three files, each holding `name`."""
    directory = Path(directory)
    pairs = []
    for suffix in (".onnx", ".json", ".pt"):
        temp = files._new_temp(directory / f"same{suffix}")
        temp.write_text(name)
        pairs.append((temp, directory / f"same{suffix}"))
    files.publish(pairs, force=True)


def test_r6_concurrent_forced_runs_publish_one_whole_set(tmp_path):
    """Many runs publishing the same three names with --force at once: afterwards the three
    files come from one run, never a mix, and nothing temporary is left."""
    context = multiprocessing.get_context("fork")
    for _ in range(5):
        procs = [context.Process(target=_publish_as, args=(f"run{i}", str(tmp_path))) for i in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            assert p.exitcode == 0
        texts = {(tmp_path / f"same{s}").read_text() for s in (".onnx", ".json", ".pt")}
        assert len(texts) == 1, texts
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(files.TEMP_PREFIX)]


def test_r5_the_pt_is_published_with_the_onnx_file_or_not_at_all(tmp_path, monkeypatch):
    """The export fails (a full disk) after the checkpoint was serialised: no .pt is left, so a
    rerun is not refused; with success all three files appear."""
    from dimap_struct.deploy import export
    from dimap_struct.pipeline import compress

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out, pt = tmp_path / "m.onnx", tmp_path / "m.pt"
    with monkeypatch.context() as patch:
        patch.setattr(export, "export_onnx", full_disk)
        with pytest.raises(UserError, match="No space left"):
            compress("reference", 0.5, output=str(out), save_pt=str(pt))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    result = compress("reference", 0.5, output=str(out), save_pt=str(pt))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx", "m.pt"]
    assert json.loads((tmp_path / "m.json").read_text())["pruned_checkpoint"] == str(pt)
    assert result.pt_path == pt


def test_r26_force_replaces_a_link_not_its_target(tmp_path):
    target, link = tmp_path / "target.onnx", tmp_path / "latest.onnx"
    target.write_text("kept")
    link.symlink_to(target)
    temp = files._new_temp(link)
    temp.write_text("new")
    files.publish([(temp, link)], force=True)
    assert not link.is_symlink() and link.read_text() == "new" and target.read_text() == "kept"


def test_r33_each_written_file_is_named_once(tmp_path, capsys):
    """A resume state rewritten every epoch, then a signal: the message names it once."""
    path = tmp_path / "g1.resume.pt"

    def run(args):
        for _ in range(3):
            with files.atomic_output(path) as tmp:
                tmp.write_text("state")
        raise signals.Terminated(signal.SIGTERM)

    assert run_command("dimap-finetune", argparse.Namespace(**ARGS), run) == 143
    err = capsys.readouterr().err
    assert err.count("g1.resume.pt") == 1, err


@pytest.mark.parametrize("edge", ["enter", "exit"])
def test_a_signal_while_handlers_are_installed_or_removed_exits_128_plus_n(edge, monkeypatch, capsys):
    """The exit-70 path: SIGTERM landed while `signals.handled` was putting its handlers in
    place (or taking them away), outside every try block, and escaped `cli.main`."""
    original = signals.signal.signal
    calls = []

    def install(signum, handler):
        result = original(signum, handler)
        calls.append(handler is signals._handle)
        # the first handler in place (enter) or the first one taken away (exit); counted by kind,
        # not position, since a parent may have set SIGHUP to be ignored (nohup), which is left alone
        if (edge == "enter" and calls == [True]) or (edge == "exit" and calls[-1] is False and calls.count(False) == 1):
            signals._handle(signal.SIGTERM, None)  # the signal arrives right here
        return result

    monkeypatch.setattr(signals.signal, "signal", install)
    code = run_command("prog", argparse.Namespace(**ARGS), lambda args: 0)
    assert code == 143


def test_r21_out_of_memory_is_one_line(capsys):
    def run(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 123456789 bytes")

    assert run_command("prog", argparse.Namespace(**ARGS), run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prog: error: out of memory"), err


def test_r21_an_address_space_too_small_for_torch_is_one_line_not_an_abort():
    """ulimit -v 3000000 made `import torch` (CUDA build) abort with std::bad_alloc, exit 134;
    the launcher checks the limit before it imports anything."""
    import resource

    from dimap_struct.cli import launch

    if not launch.cuda_torch_installed():
        pytest.skip("the CPU-only torch build is not checked")
    limit = 3_000_000 * 1024
    code = "import sys; from dimap_struct.cli.launch import compress; sys.argv[0] = 'dimap-compress'; sys.exit(compress())"
    proc = subprocess.run([sys.executable, "-c", code, "swin_t", "-o", "x.onnx"], capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "dimap-compress: error: out of memory while loading the libraries: the address-space limit (ulimit -v) is "
        "2.86 GiB and this torch build needs about 3.2 GiB; raise it"]


def test_r34_library_warnings_stay_off_stderr_without_debug(capsys):
    def run(args):
        warnings.warn("a library's advice", UserWarning)
        return 0

    assert run_command("prog", argparse.Namespace(**ARGS), run) == 0
    assert capsys.readouterr().err == ""
    with pytest.warns(UserWarning):
        run_command("prog", argparse.Namespace(quiet=True, debug=True), run)


def test_r25_stdout_that_fails_exits_quietly_and_keeps_the_files(tmp_path, capfd, monkeypatch):
    """--json into a full device: one line, exit 2, the published files complete; into a pipe
    whose reader left: no message, 141 like `cat` killed by SIGPIPE. In this process, through the
    command's entry point (Python ignores SIGPIPE here as in the console script, so a write into
    the closed pipe fails with EPIPE in both); stderr read at its file descriptor, and no warning
    may leave the command."""
    from dimap_struct.cli import compress

    def run(stdout, argv):
        monkeypatch.setattr(sys, "stdout", stdout)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = compress.main(argv)
        monkeypatch.undo()
        assert not caught, [str(w.message) for w in caught]
        return code

    out = tmp_path / "m.onnx"
    with open("/dev/full", "w") as full:
        code = run(full, ["reference", "--json", "-o", str(out)])
    err = capfd.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [
        "dimap-compress: error: cannot write standard output: No space left on device; the files written are "
        "complete"]
    assert json.loads((tmp_path / "m.json").read_text())["onnx"]["bytes"] == out.stat().st_size

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader leaves before the output comes, like `head -c 0`
    with open(write_end, "w") as pipe:
        code = run(pipe, ["reference", "--json"])
    assert code == 141
    assert capfd.readouterr().err == ""


def test_r22_ctrl_c_while_the_libraries_load_is_one_line():
    """SIGINT at several moments of start-up (imports of torch, timm...): never a traceback."""
    import time

    launch = "import sys; from dimap_struct.cli.launch import compress; sys.exit(compress())"  # the console script
    # inside the imports of torch, numpy, timm and onnx (about 3 s in all); an interrupt inside
    # numpy's C module once gave "cannot load module more than once per process" (1 of 38 delays)
    # SIGINT as a terminal sends it: a disposition the test process inherited (SIG_IGN survives
    # exec) must not decide whether the child can be interrupted
    for delay in (0.2, 0.4, 0.6, 0.75, 0.9, 1.2, 1.6, 2.2):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", launch, "reference", "--json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (delay, err)
        # the run takes longer than the longest delay: an interrupted child never finishes it
        assert proc.returncode in (130, -signal.SIGINT), (delay, proc.returncode, err, time.perf_counter() - start)


@pytest.mark.parametrize("log_every", [1, 20])
def test_r20_training_that_diverges_stops_at_the_first_non_finite_loss(monkeypatch, log_every):
    """Read back every step, the non-finite loss stops training before its step; read back every
    20 steps, the message names the step and the steps that one read covered. No state is saved."""
    from shared_data import mnist_dir

    from dimap_struct.models import load_model
    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover import finetune as ft

    data = mnist_dir()
    if data is None:
        pytest.skip("needs the shared MNIST")
    loaded = load_model("reference")
    student = load_model("reference").model
    before = {k: v.clone() for k, v in student.state_dict().items()}
    calls = []
    real = ft.kd_loss

    def loss_that_explodes(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(ft, "kd_loss", loss_that_explodes)
    saved = []
    with pytest.raises(UserError, match="training diverged at step 3") as err:
        ft.finetune(student, loaded.model, data, loaded.data_config,
                    TrainingOptions(max_steps=5, batch_size=8, log_every=log_every,
                                    save_every=1 if log_every == 1 else None), on_save=saved.append)
    assert [s["step"] for s in saved] == ([1, 2] if log_every == 1 else [])
    if log_every > 1:  # steps 3 and 4 were taken before the read at the end (step 5)
        assert "steps 2-5 were read back" in str(err.value)
        return
    after = student.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the two good steps were taken


def _hf_dir(tmp_path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                     window_size=4, num_labels=5)
    torch.manual_seed(0)
    model = transformers.SwinForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_r19_hf_weights_pass_the_checkpoint_checks(tmp_path):
    from safetensors.torch import load_file, save_file

    from dimap_struct.models import load_model

    directory = _hf_dir(tmp_path)
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("query.weight"))
    poisoned = {**state, key: state[key].clone().index_fill_(1, torch.tensor([0]), float("nan"))}
    save_file(poisoned, str(weights), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"non-finite weights .*q_proj.weight"):
        load_model(f"hf:{directory}")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match=f"cannot read the transformers model in {directory}"):
        load_model(f"hf:{directory}")


def test_r30_a_hub_id_missing_from_the_cache_says_the_hub_cannot_be_reached(monkeypatch):
    from dimap_struct.models import load_model

    pytest.importorskip("transformers")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError) as caught:
        load_model("hf:nobody/no-such-swin")
    assert "the Hub cannot be reached" in str(caught.value) and "HF_HUB_OFFLINE is set" not in str(caught.value)
