"""Hugging Face Swin beyond the default criterion (models/adapters/hf_swin.py): every registered
criterion through `compress` (the data-driven ones, and one-shot recovery, on a random
ImageFolder), dynamic INT8 through the CLI on a save_pretrained directory, and fine-tuning
(Python API and dimap-finetune) after which transformers' own forward still runs."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import dimap_struct
from dimap_struct.prune.criteria import ALIASES, get_criterion

transformers = pytest.importorskip("transformers")

from test_hf_swin import SIZE, build, own_forward  # noqa: E402  (needs transformers)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES, PER_CLASS = 5, 4  # num_labels=5 in build(); 20 images: 16 in the train split, 4 in eval


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A random RGB ImageFolder at the model's input size, one subfolder per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("hf_images")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir()
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return str(root)


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _check_runs_in_transformers(result, batch: int = 2):
    """The pruned transformers model's own forward runs at `batch`, equals the wrapper's and
    carries the cut in its head bookkeeping."""
    hf = result.model.hf
    assert not hf.training
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    logits = own_forward(hf, x)
    assert logits.shape == (batch, CLASSES) and torch.isfinite(logits).all()
    with torch.no_grad():
        assert torch.allclose(logits, result.model(x), atol=1e-6)
    heads = [m.num_attention_heads for m in hf.modules() if hasattr(m, "num_attention_heads")]
    assert heads == [r.heads for r in result.report.blocks]


@pytest.mark.parametrize("criterion", list(ALIASES))
def test_every_criterion_prunes_an_hf_model_to_the_budget(criterion, folder):
    original = build("SwinForImageClassification")
    before = _snapshot(original)
    data = dict(calib_data=folder, calib_batches=1, calib_images=16) if get_criterion(criterion).needs_data else {}
    result = dimap_struct.compress(original, 0.5, criterion=criterion, output=None, **data)
    report = result.report
    assert report.criterion == criterion
    assert abs(report.achieved.ratio - 0.5) <= 0.02, report.achieved.ratio
    assert any(r.heads < r.heads_before or r.mlp_width < r.mlp_width_before for r in report.blocks)
    assert report.verification["mask_equivalence_max_abs_diff"] <= 1e-4
    _check_runs_in_transformers(result)
    # the caller's model is untouched, and a gradient pass (taylor) leaves no gradients behind
    assert _same(before, _snapshot(original)) and all(p.grad is None for p in original.parameters())
    assert all(p.grad is None for p in result.model.parameters())
    if data:  # with --calib-data, one-shot recovery refits proj / fc2 of the HF layout too
        assert report.recovery is not None and report.recovery["method"] == "refit"


def test_dynamic_int8_of_a_save_pretrained_directory_through_the_cli(tmp_path, capsys):
    from dimap_struct.cli import compress as cli
    from dimap_struct.deploy.onnx_file import read_report

    build("SwinForImageClassification").save_pretrained(tmp_path / "model")
    out = tmp_path / "q.onnx"
    capsys.readouterr()  # save_pretrained's own progress output
    assert cli.main([f"hf:{tmp_path / 'model'}", "--flops", "0.5", "--quantize", "int8-dynamic", "-o", str(out),
                     "--save-pt", str(tmp_path / "f.pt"), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["achieved"]["ratio"] - 0.5) <= 0.02
    assert out.is_file() and report["quantization"]["scheme"] == "int8-dynamic"
    stored = read_report(out)  # the file's own metadata says what it is
    assert stored.quantization["scheme"] == "int8-dynamic" and stored.quantization["weights"] == "int8"
    assert stored.quantization["calibration"] is None
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    int8 = session.run(None, {"input": x.numpy()})[0]
    assert int8.shape == (2, CLASSES) and np.isfinite(int8).all()
    reference = own_forward(dimap_struct.load_pruned(tmp_path / "f.pt").hf, x).numpy()  # the float pruned model
    assert np.abs(int8 - reference).max() <= 0.05 * np.abs(reference).max() + 0.05


@pytest.mark.parametrize("name", ["SwinForImageClassification", "Swinv2ForImageClassification"])
def test_finetuning_changes_the_weights_and_transformers_still_runs_them(name, folder, monkeypatch):
    from dimap_struct.models import wrap_model
    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover import finetune as ft

    loaded = wrap_model(build(name))
    result = dimap_struct.compress(loaded, 0.5)
    teacher, student = loaded.model, result.model
    teacher_before, pruned = _snapshot(teacher), _snapshot(student)
    optimizers = []
    create = ft.create_optimizer_v2
    monkeypatch.setattr(ft, "create_optimizer_v2", lambda *a, **k: optimizers.append(create(*a, **k)) or optimizers[-1])
    cfg = TrainingOptions(max_steps=2, batch_size=4, lr=1e-3)
    summary = ft.finetune(student, teacher, folder, loaded.data_config, cfg, seed=0)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    after = _snapshot(student)
    assert after.keys() == pruned.keys() and all(after[k].shape == pruned[k].shape for k in after)
    changed = [k for k in after if not torch.equal(after[k], pruned[k])]
    assert any(".attention." in k for k in changed) and any("classifier" in k for k in changed)
    assert _same(teacher_before, _snapshot(teacher))  # the teacher only teaches
    assert not student.training
    _check_runs_in_transformers(result, batch=2)
    # as for timm's Swins: position bias tables, v2's logit_scale and its bias MLP are not decayed
    names = {id(p): n for n, p in student.named_parameters()}
    decayed = {names[id(p)] for g in optimizers[0].param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert any(".attention." in n for n in decayed)
    keys = ("relative_position_bias_table", "logit_scale", "continuous_position_bias_mlp")
    special = [n for n in names.values() if any(key in n for key in keys)]
    assert special and not decayed & set(special)


def test_dimap_finetune_takes_an_hf_directory(tmp_path, folder, capsys):
    from dimap_struct.cli import finetune as cli
    from dimap_struct.recover.finetune import weights_digest

    build("SwinForImageClassification").save_pretrained(tmp_path / "model")
    out = tmp_path / "ft.onnx"
    capsys.readouterr()
    assert cli.main([f"hf:{tmp_path / 'model'}", "--flops", "0.5", "--data", folder, "--max-steps", "2",
                     "--batch-size", "4", "-o", str(out), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["finetune"]["steps"] == 2 and abs(report["achieved"]["ratio"] - 0.5) <= 0.02
    pruned = dimap_struct.compress(f"hf:{tmp_path / 'model'}", 0.5).model  # the same cut, not trained
    assert report["finetune"]["weights_sha256"] != weights_digest(pruned)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    logits = session.run(None, {"input": x.numpy()})[0]
    assert logits.shape == (2, CLASSES) and np.isfinite(logits).all()
    assert np.abs(logits - own_forward(pruned.hf, x).numpy()).max() > 1e-4  # the exported model is the trained one
