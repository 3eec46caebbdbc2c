"""dimap-finetune: single process, torchrun with 2 gloo processes, interruption and --resume."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from dimap_struct.deploy.evaluate import accuracy, onnx_classifier
from shared_data import mnist_dir

pytestmark = pytest.mark.skipif(mnist_dir() is None, reason="needs ../shared/data/mnist")
BASE = ["reference", "--no-pretrained", "--flops", "0.5", "--quiet"]
LOUD = [*BASE, "--debug"]  # off a terminal, each rank prints its weights' digest only with --debug


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    """The first 1,000 real digits as an MNIST directory (train split 800, eval 200): fast epochs."""
    import gzip
    import struct

    from dimap_struct.data import MNIST_FILES, read_idx

    root = tmp_path_factory.mktemp("mnist_small")
    images = read_idx(mnist_dir() / f"{MNIST_FILES[0]}.gz")[:1000]
    labels = read_idx(mnist_dir() / f"{MNIST_FILES[1]}.gz")[:1000]
    with gzip.open(root / f"{MNIST_FILES[0]}.gz", "wb") as f:
        f.write(struct.pack(">iiii", 2051, len(images), 28, 28) + images.tobytes())
    with gzip.open(root / f"{MNIST_FILES[1]}.gz", "wb") as f:
        f.write(struct.pack(">ii", 2049, len(labels)) + labels.tobytes())
    return str(root)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_two_gloo_processes_agree_and_match_the_log(tmp_path, small_mnist):
    out = tmp_path / "ft.onnx"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "dimap_struct.cli.finetune", *LOUD, "--max-steps", "4", "--batch-size", "16", "--data", small_mnist,
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d): weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    report = json.loads(out.with_suffix(".json").read_text())
    ft = report["finetune"]
    assert ft["world_size"] == 2 and ft["steps"] == 4 and ft["weights_sha256"] == digests["0"]
    # the exported model is the one the log describes: its accuracy is what the script reported
    measured = accuracy(onnx_classifier(out), small_mnist, split="eval")["top1"]
    assert measured == pytest.approx(ft["finetuned_top1"], abs=0.1)
    assert f"fine-tuned {ft['finetuned_top1']:.2f}%" in proc.stdout
    assert not out.with_suffix(".resume.pt").exists()


def test_sigterm_leaves_no_output_and_resume_finishes(tmp_path, small_mnist):
    """SIGTERM (what Slurm, Docker and `timeout` send; Ctrl-C takes the same path) in the second
    epoch: exit 143, no ONNX / JSON, no temporary file, the first epoch kept for --resume."""
    out = tmp_path / "r.onnx"
    resume = out.with_suffix(".resume.pt")
    cmd = [sys.executable, "-m", "dimap_struct.cli.finetune", *BASE, "--epochs", "2", "--batch-size", "100",
           "--data", small_mnist, "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    deadline = time.time() + 240
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert resume.exists(), "no resume checkpoint after the first epoch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "--resume" in err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ft = json.loads(out.with_suffix(".json").read_text())["finetune"]
    assert ft["resumed"] and ft["steps"] == 2 * ft["steps_per_epoch"] == 16
    assert out.exists() and not resume.exists()


def test_resume_refuses_a_different_command(tmp_path, capsys):
    from dimap_struct.cli import finetune as cli_finetune

    code = cli_finetune.main([*BASE, "-o", str(tmp_path / "x.onnx"), "--resume"])
    assert code == 2 and "no " in capsys.readouterr().err
    # a checkpoint whose identity (recipe, process count) is another command's is refused
    from dimap_struct.options import FinetuneOptions
    from dimap_struct.recover.finetune import save_state

    other = FinetuneOptions(model="reference", pretrained=False, flops="0.6").recipe()
    well_formed = {"student": {}, "optimizer": {"state": {}, "param_groups": [{}]}, "epoch": 1, "step": 8}
    save_state(cli_finetune.resume_path(str(tmp_path / "x.onnx")), well_formed, {"recipe": other, "world_size": 1})
    code = cli_finetune.main([*BASE, "-o", str(tmp_path / "x.onnx"), "--resume"])
    assert code == 2 and "different command" in capsys.readouterr().err


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
    from dimap_struct.prune.budget import target_macs

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
        assert budget.target_macs(current) == target_macs(f"{wanted / 1e9:.12g}G", current)
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


def test_a_resume_state_saved_before_policy_existed_is_accepted(tmp_path):
    """0.2.0 recipes had no `policy`: such a state means the criterion's own policy, not another command."""
    from dimap_struct.options import FinetuneOptions
    from dimap_struct.pipeline.finetuning import _resume_state
    from dimap_struct.recover.finetune import DistContext
    from dimap_struct.recover.finetune import save_state

    options = FinetuneOptions(model="reference", pretrained=False, flops="0.6", output=str(tmp_path / "x.onnx"),
                              resume=True)
    old_recipe = {k: v for k, v in options.recipe().items() if k != "policy"}
    well_formed = {"student": {}, "optimizer": {"state": {}, "param_groups": [{}]}, "epoch": 1, "step": 8}
    save_state(tmp_path / "x.resume.pt", well_formed, {"recipe": old_recipe, "world_size": 1})
    assert _resume_state(options, DistContext())["step"] == 8
