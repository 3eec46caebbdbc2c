"""dimap-finetune: single process, torchrun (2 nodes x 2 gloo processes; 2 processes resuming one
process's state), interruption and --resume."""
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from dimap_struct.deploy.evaluate import accuracy, onnx_classifier
from shared_data import mnist_dir

pytestmark = pytest.mark.skipif(mnist_dir() is None, reason="needs ../shared/data/mnist")
BASE = ["reference", "--no-pretrained", "--flops", "0.5", "--quiet"]
LOUD = [*BASE, "--debug"]  # off a terminal, each rank prints its weights' digest only with --debug


def _mnist_subset(root, count: int) -> str:
    """The first `count` real digits as an MNIST directory (4/5 train, 1/5 eval)."""
    import gzip
    import struct

    from dimap_struct.data import MNIST_FILES, read_idx

    images = read_idx(mnist_dir() / f"{MNIST_FILES[0]}.gz")[:count]
    labels = read_idx(mnist_dir() / f"{MNIST_FILES[1]}.gz")[:count]
    with gzip.open(root / f"{MNIST_FILES[0]}.gz", "wb") as f:
        f.write(struct.pack(">iiii", 2051, len(images), 28, 28) + images.tobytes())
    with gzip.open(root / f"{MNIST_FILES[1]}.gz", "wb") as f:
        f.write(struct.pack(">ii", 2049, len(labels)) + labels.tobytes())
    return str(root)


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    """The first 1,000 real digits (train split 800, eval 200): fast epochs."""
    return _mnist_subset(tmp_path_factory.mktemp("mnist_small"), 1000)


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """The first 100 real digits (train split 80): epochs of 10 steps of 8 images."""
    return _mnist_subset(tmp_path_factory.mktemp("mnist_tiny"), 100)


ONE_PROCESS = dict(pretrained=False, flops=0.5, model_kwargs={"drop_path_rate": 0.0}, max_steps=2, batch_size=32,
                   accum_steps=4)
"""One process of 32 images per step in 4 parts, 2 steps: the run the torchrun tests are compared to
(drop-path off, as it draws per forward)."""


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_mnist):
    """The ONNX file of `ONE_PROCESS` on the 100 digits, run here through the API the command
    calls (a torch start less), and 20 held-out digits to compare models on."""
    from dimap_struct.data import build_dataset
    from dimap_struct.models import load_model
    from dimap_struct.pipeline import finetune

    out = tmp_path_factory.mktemp("one_process") / "one.onnx"
    finetune("reference", None, data=tiny_mnist, output=str(out), **ONE_PROCESS)
    return out, build_dataset(tiny_mnist, "eval", load_model("reference").data_config)[list(range(20))][0]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _no_drop_path_recipe(tmp_path) -> str:
    """A recipe file with drop-path off (it draws per forward), for the torchrun launches."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"command": "dimap-finetune", "model_kwargs": {"drop_path_rate": 0.0}}))
    return str(recipe)


def _digests(stderr: str) -> dict[str, str]:
    """Each rank's logged weights digest (with --debug)."""
    return dict(re.findall(r"rank (\d): weights sha256 ([0-9a-f]{64})", stderr))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_nodes_of_two_processes_take_the_step_of_one_process(tmp_path, tiny_mnist, one_process):
    """torchrun --nnodes 2 --nproc-per-node 2 (c10d rendezvous, gloo, one machine): the 4 ranks end
    on one set of weights, which the report and the exported file are, and the model equals one
    process with 4x the batch in 4 accumulation parts (each image's augmentation has its own seed;
    drop-path off, as it draws per forward)."""
    recipe = _no_drop_path_recipe(tmp_path)
    common = [*LOUD, "--config", recipe, "--max-steps", "2", "--data", tiny_mnist]
    nodes = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{_free_port()}", "--rdzv-id", "t2x2",
             "-m", "dimap_struct.cli.finetune", *common, "--batch-size", "8", "-o", str(tmp_path / "four.onnx")]
    launches = [subprocess.Popen(nodes, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                for _ in range(2)]
    outputs = [p.communicate(timeout=400) for p in launches]
    assert all(p.returncode == 0 for p in launches), [err[-2000:] for _, err in outputs]
    digests = _digests("".join(err for _, err in outputs))
    assert set(digests) == {"0", "1", "2", "3"} and len(set(digests.values())) == 1
    out = tmp_path / "four.onnx"
    ft = json.loads(out.with_suffix(".json").read_text())["finetune"]
    assert ft["world_size"] == 4 and ft["steps"] == 2 and ft["weights_sha256"] == digests["0"]
    # the exported model is the one the log describes: its accuracy is what the script reported
    measured = accuracy(onnx_classifier(out), tiny_mnist, split="eval")["top1"]
    assert measured == pytest.approx(ft["finetuned_top1"], abs=0.1)
    assert f"fine-tuned {ft['finetuned_top1']:.2f}%" in "".join(stdout for stdout, _ in outputs)
    assert not out.with_suffix(".resume.pt").exists()
    one, images = one_process
    four = onnx_classifier(out).predict(images)
    assert float((four - onnx_classifier(one).predict(images)).abs().max()) < 1e-4


def test_two_processes_resume_a_stopped_process_of_their_images_per_step(tmp_path, tiny_mnist, one_process):
    """One process of 32 images per step (4 --accum-steps parts) is stopped after its first step;
    torchrun --nproc-per-node 2 of 16 images each resumes its state and takes the second step: the
    2 ranks agree, the report says it resumed, and the model equals one process that was never
    stopped (drop-path off, as it draws per forward)."""
    from dimap_struct import signals
    from dimap_struct.pipeline import finetune

    recipe = _no_drop_path_recipe(tmp_path)
    out = tmp_path / "two.onnx"

    def stop(step, total, loss):
        if step == 1:
            raise signals.Terminated(signal.SIGTERM)

    # the process that is stopped runs here, through the API the command calls
    with pytest.raises(signals.Terminated):
        finetune("reference", None, data=tiny_mnist, output=str(out), on_train_step=stop, **ONE_PROCESS)
    assert out.with_suffix(".resume.pt").is_file() and not out.exists()

    launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "dimap_struct.cli.finetune", *LOUD, "--config", recipe, "--max-steps", "2",
                             "--data", tiny_mnist, "--batch-size", "16", "-o", str(out), "--resume"],
                            capture_output=True, text=True, env=_env(), timeout=400)
    assert launch.returncode == 0, launch.stderr[-2000:]
    digests = _digests(launch.stderr)
    assert set(digests) == {"0", "1"} and len(set(digests.values())) == 1
    ft = json.loads(out.with_suffix(".json").read_text())["finetune"]
    assert ft["world_size"] == 2 and ft["resumed"] and ft["steps"] == 2 and ft["weights_sha256"] == digests["0"]
    assert not out.with_suffix(".resume.pt").exists()
    one, images = one_process
    two = onnx_classifier(out).predict(images)
    assert float((two - onnx_classifier(one).predict(images)).abs().max()) < 1e-4


def test_sigterm_leaves_no_output_and_resume_finishes(tmp_path, small_mnist):
    """SIGTERM (what Slurm, Docker and `timeout` send; Ctrl-C takes the same path) mid-epoch,
    once --save-every has written a state: exit 143, no ONNX / JSON, no temporary file, a state
    saved at the end of the step the signal arrived in, and --resume finishes the run."""
    out = tmp_path / "r.onnx"
    resume = out.with_suffix(".resume.pt")
    cmd = [sys.executable, "-m", "dimap_struct.cli.finetune", *BASE, "--max-steps", "6", "--batch-size", "100",
           "--save-every", "2", "--data", small_mnist, "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    deadline = time.time() + 240
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert resume.exists(), "no resume state after --save-every steps"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "--resume" in err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    from dimap_struct.recover.finetune import read_state

    kept = read_state(resume)
    assert kept["step"] >= 2 and kept["position"] == kept["step"] and kept["epoch"] == 0

    from dimap_struct.cli import finetune as finetune_cli

    # the resumed run in this process, through the command's own entry point (a process less to start)
    assert finetune_cli.main(cmd[3:] + ["--resume"]) == 0
    ft = json.loads(out.with_suffix(".json").read_text())["finetune"]
    assert ft["resumed"] and ft["steps"] == 6 and ft["steps_per_epoch"] == 8
    assert out.exists() and not resume.exists()


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path, tiny_mnist):
    """Stopped by a signal in epoch 1 (the state saved at the end of that step), or killed with
    only the --save-every state of epoch 2 left: each resumed run, from the state written and
    read back, ends on the weights of a run that was never stopped."""
    from dimap_struct import signals
    from dimap_struct.models import load_model
    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover.finetune import finetune, read_state, save_state, weights_digest

    loaded = load_model("reference")
    cfg = TrainingOptions(epochs=2, max_steps=14, batch_size=8, save_every=3)

    def run(name, state=None, on_step=None):
        student = load_model("reference").model
        finetune(student, loaded.model, tiny_mnist, loaded.data_config, cfg, state=state, on_step=on_step,
                 on_save=lambda st: save_state(tmp_path / f"{name}{st['step']}.pt", st, {}))
        return weights_digest(student)

    def stop(step, total, loss):
        if step == 5:
            raise signals.Terminated(signal.SIGTERM)

    whole = run("whole")
    assert sorted(int(p.stem[5:]) for p in tmp_path.glob("whole*.pt")) == [3, 6, 9, 10, 12]
    killed = read_state(tmp_path / "whole12.pt")
    assert (killed["epoch"], killed["position"]) == (1, 2)
    with pytest.raises(signals.Terminated):
        run("stopped", on_step=stop)
    stopped = read_state(tmp_path / "stopped5.pt")
    assert (stopped["epoch"], stopped["position"], stopped["step"]) == (0, 5, 5)
    assert run("resumed", stopped) == whole
    assert run("resumed", killed) == whole


@pytest.mark.parametrize("model, data", [("reference", "tiny_mnist"), ("reference-cifar10", "few")])
def test_workers_do_not_change_the_batches(model, data, request):
    """Each image's augmentation comes from its own seed: with or without a worker process the
    training ends on the same weights (digits held in memory; photographs read by a worker as uint8
    and normalised by timm's PrefetchLoader)."""
    from dimap_struct.models import load_model
    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover.finetune import finetune, weights_digest

    loaded = load_model(model)
    digests = []
    for workers in (0, 1):
        student = load_model(model).model
        summary = finetune(student, loaded.model, request.getfixturevalue(data), loaded.data_config,
                           TrainingOptions(max_steps=2, batch_size=4, workers=workers))
        assert summary["workers"] == workers and summary["amp"] == "none" and math.isfinite(summary["final_loss"])
        digests.append(weights_digest(student))
    assert digests[0] == digests[1]


def test_amp_resolves_per_device():
    from dimap_struct.errors import UserError
    from dimap_struct.recover.finetune import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("none", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(UserError, match="--amp fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)


def _without_drop_path(model):
    """`model` with drop-path off: it draws per forward, so two halves of a batch would draw other
    masks than the whole batch."""
    for module in model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    return model


def test_timm_training_parts(tiny_mnist):
    """--accum-steps 2 takes the step of one whole batch (within float rounding); --opt, --clip-grad
    and --smoothing change the steps; with --ema-decay the moving average is the result, and a
    resumed run restores it."""
    import copy

    from dimap_struct.models import load_model
    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover.finetune import finetune

    loaded = load_model("reference")

    def train(**settings):
        student = _without_drop_path(load_model("reference").model)
        saved = []
        summary = finetune(student, loaded.model, tiny_mnist, loaded.data_config,
                           TrainingOptions(max_steps=3, batch_size=8, **settings),
                           on_save=lambda state: saved.append(copy.deepcopy(state)))  # it holds the live tensors
        return student.state_dict(), summary, saved

    whole, _, _ = train()
    halves, _, _ = train(accum_steps=2)
    # Adam divides by the gradients' size: rounding moves a weight by at most lr per step
    assert all(torch.allclose(whole[k], halves[k], rtol=0, atol=3 * 5e-4) for k in whole)
    for other in (dict(opt="sgd"), dict(clip_grad=0.01), dict(smoothing=0.1)):
        weights, summary, _ = train(**other)
        assert math.isfinite(summary["final_loss"]) and any(not torch.equal(whole[k], weights[k]) for k in whole)
    averaged, _, saved = train(ema_decay=0.5, save_every=2)
    assert saved and saved[0]["ema"] and any(not torch.equal(whole[k], averaged[k]) for k in whole)
    student = _without_drop_path(load_model("reference").model)
    finetune(student, loaded.model, tiny_mnist, loaded.data_config,
             TrainingOptions(max_steps=3, batch_size=8, ema_decay=0.5, save_every=2), state=saved[0])
    assert all(torch.equal(averaged[k], v) for k, v in student.state_dict().items())


def test_mixup_and_cutmix_through_timm(tiny_mnist):
    """--mixup / --cutmix change the steps, and a run resumed from a mid-run state ends on the same
    weights (timm's Mixup draws from numpy's RNG, which the state holds)."""
    import copy

    from dimap_struct.models import load_model
    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover.finetune import finetune, weights_digest

    loaded = load_model("reference")

    def train(state=None, **settings):
        student = load_model("reference").model
        saved = []
        finetune(student, loaded.model, tiny_mnist, loaded.data_config,
                 TrainingOptions(max_steps=4, batch_size=8, save_every=2, **settings), state=state,
                 on_save=lambda st: saved.append(copy.deepcopy(st)))
        return weights_digest(student), saved

    plain, _ = train()
    mixed, saved = train(mixup=0.8, cutmix=1.0, smoothing=0.1)
    assert mixed != plain
    assert train(saved[0], mixup=0.8, cutmix=1.0, smoothing=0.1)[0] == mixed


def test_soft_labels_give_the_loss_of_their_classes():
    from dimap_struct.recover.finetune import kd_loss

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 10, generator=gen), torch.randn(6, 10, generator=gen)
    labels = torch.arange(6)
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    torch.testing.assert_close(kd_loss(student, teacher, one_hot, 0.7, 2.0, smoothing=0.3),
                               kd_loss(student, teacher, labels, 0.7, 2.0))


def test_resume_refuses_a_different_command(tmp_path, capsys):
    from dimap_struct.cli import finetune as cli_finetune

    code = cli_finetune.main([*BASE, "-o", str(tmp_path / "x.onnx"), "--resume"])
    assert code == 2 and "no " in capsys.readouterr().err
    # a state whose identity (recipe, images per step) is another command's is refused, naming
    # what differs; the process count, --batch-size and --accum-steps are not part of it
    from dimap_struct.options import FinetuneOptions
    from dimap_struct.pipeline.finetuning import _identity
    from dimap_struct.recover.finetune import DistContext, rng_state, save_state

    def identity(world_size, **options):
        return _identity(FinetuneOptions(model="reference", pretrained=False, **options),
                         dataclasses.replace(DistContext(), world_size=world_size))

    assert identity(4, batch_size=16) == identity(2, batch_size=32, accum_steps=4) == identity(1, batch_size=64)
    well_formed = {"student": {}, "optimizer": {"state": {}, "param_groups": [{}]}, "scaler": {}, "ema": {},
                   "rng": rng_state(torch.device("cpu")), "epoch": 1, "position": 0, "step": 8}
    for other, differs in ((identity(1, flops="0.6"), "flops 0.6 there, 0.5 here"),
                           (identity(2, batch_size=64, flops="0.5"), "images per step (--batch-size x processes) 128 there, "
                                                        "64 here")):
        save_state(cli_finetune.resume_path(str(tmp_path / "x.onnx")), well_formed, other)
        code = cli_finetune.main([*BASE, "-o", str(tmp_path / "x.onnx"), "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and f"different command ({differs})" in err and len(err.splitlines()) == 1, err
    # the form of 0.2.0 and before (the process count instead of the images per step)
    save_state(cli_finetune.resume_path(str(tmp_path / "x.onnx")), well_formed,
               {"recipe": FinetuneOptions(model="reference", pretrained=False, flops="0.5").recipe(), "world_size": 1})
    assert cli_finetune.main([*BASE, "-o", str(tmp_path / "x.onnx"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "saved by an earlier version" in err and len(err.splitlines()) == 1, err


def test_iterative_rounds_reach_the_target_and_trace_heads_back(tmp_path, small_mnist):
    """--steps 2: two prune + KD rounds on the geometric schedule; the report is stated against
    the original model (its kept heads are original indices) and the ONNX file is exported."""
    from dimap_struct.cli import finetune as cli_finetune
    from dimap_struct.pipeline import schedule

    assert schedule(0.25, 2) == [0.5, 0.25]
    out = tmp_path / "it.onnx"
    code = cli_finetune.main([*BASE, "--flops", "0.5", "--steps", "2", "--max-steps", "4", "--batch-size", "32",
                              "--data", small_mnist, "-o", str(out), "--json"])
    assert code == 0 and out.exists()
    report = json.loads(out.with_suffix(".json").read_text())
    rounds = report["iterative"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["target_ratio"] == pytest.approx(0.5 ** 0.5)
    assert abs(report["achieved"]["ratio"] - 0.5) <= 0.01 and report["original"]["macs"] > report["pruned"]["macs"]
    for row in report["blocks"]:
        assert len(row["kept_heads"]) == row["heads"] and all(0 <= h < row["heads_before"] for h in row["kept_heads"])
    assert report["architecture"]["source_model"] == "reference-mnist"
    assert report["finetune"]["steps"] == 4


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swinv2_cr_tiny_ns_224", "torchvision:swin_v2_t"])
def test_position_terms_are_not_decayed_in_any_family(name):
    """Fine-tuning's AdamW groups: bias tables, logit scales and position-bias MLPs undecayed in
    every family (torchvision's Swin names none of them itself), the projections decayed."""
    from dimap_struct import load_model
    from dimap_struct.recover.finetune import decay_groups

    model = load_model(name, pretrained=False).model
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in decay_groups(model, 0.05) if g["weight_decay"] > 0 for p in g["params"]}
    position = [n for n in names.values() if any(k in n for k in ("relative_position_bias_table", "logit_scale",
                                                                    "cpb_mlp"))]
    assert position and not decayed & set(position)
    assert any(n.endswith("qkv.weight") for n in decayed)


def test_rounds_keep_the_source_and_its_notes():
    """Round 2 on prunes the model as the same loaded model: the report keeps the random-init
    note and the source that one `compress` call gives."""
    from dimap_struct import load_model
    from dimap_struct.options import CompressOptions
    from dimap_struct.pipeline import compress, prune_in_rounds

    loaded = load_model("reference", pretrained=False)
    options = CompressOptions(model="reference", pretrained=False, flops="0.5")
    single = compress(loaded, options).report
    _, report, _ = prune_in_rounds(loaded, options, 2, lambda model, k: {})
    assert report.notes == single.notes and report.source == single.source
    assert report.architecture.source_model == single.architecture.source_model
    assert (report.criterion, report.score, report.policy) == (single.criterion, single.score, single.policy)
    assert report.policy is not None


def test_rounds_pass_their_budgets_as_numbers(monkeypatch):
    """Each round's MACs budget reaches the cut as a number, never as text parsed again, and it
    is the count that the text form of the same number ('<x>G', 12 digits) gave."""
    from dimap_struct import load_model
    from dimap_struct.options import CompressOptions
    from dimap_struct.pipeline import prune_in_rounds, rounds, schedule
    from dimap_struct.prune.budget import Budget

    seen = []
    real = rounds.compress_to
    monkeypatch.setattr(rounds, "compress_to", lambda model, options, budget, on_step=None:
                        seen.append((budget, options.flops)) or real(model, options, budget, on_step))
    loaded = load_model("reference", pretrained=False)
    _, report, records = prune_in_rounds(loaded, CompressOptions(model="reference", pretrained=False, flops="0.3"),
                                         3, lambda model, k: {})
    original = report.original.macs
    assert len(seen) == 3 and all(b.macs is not None and b.fraction is None and flops == "0.3" for b, flops in seen)
    current = original
    for (budget, _), ratio, record in zip(seen, schedule(0.3, 3), records):
        wanted = min(ratio * original, current)
        assert budget.target_macs(current) == Budget.parse(f"{wanted / 1e9:.12g}G").target_macs(current)
        current = round(record["achieved_ratio"] * original)
    assert report.pruned.macs == current and report.target.flops == "0.3" and report.recipe["flops"] == "0.3"


def test_the_python_api_keeps_weight_pruning_zeros_and_writes_nothing_without_output(tmp_path, small_mnist,
                                                                                     monkeypatch):
    """`pipeline.finetune` takes granularity 'weight' (the command does not): the weights it
    zeroed are still zero after training. Without an output it writes no file."""
    from dimap_struct.models.adapters import adapter_for_model
    from dimap_struct.pipeline import finetune
    from dimap_struct.prune.unstructured import zero_masks

    monkeypatch.chdir(tmp_path)
    result = finetune("reference", granularity="weight", params=0.4, pretrained=False, data=small_mnist,
                      max_steps=3, batch_size=16)
    report = result.report
    assert report.granularity == "weight" and report.finetune["steps"] == 3 and result.onnx_path is None
    masks = [m for _, m in zero_masks(adapter_for_model(result.model).blocks())]
    zeroed = sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks)
    assert zeroed == pytest.approx(1 - report.achieved.kept_prunable_fraction, abs=1e-6)
    assert list(tmp_path.iterdir()) == []
