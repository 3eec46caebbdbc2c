"""Hugging Face transformers Swin / Swin v2 (models/adapters/hf_swin.py), offline: small configs
with random weights (norms and temperatures perturbed so a wrong cut would show), pruned at
R in {0.8, 0.5, 0.3} with and without residual channels. Checked against transformers' own
forward: the pruned model equals the original with the removed heads' value rows and MLP
channels' fc1 rows zeroed, and the ONNX file equals transformers' forward at batch 1 and 3."""
import copy
import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

import dimap_struct
from dimap_struct.cli import compress as cli

transformers = pytest.importorskip("transformers")

CLASSES = {
    "SwinModel": (transformers.SwinModel, transformers.SwinConfig),
    "SwinForImageClassification": (transformers.SwinForImageClassification, transformers.SwinConfig),
    "Swinv2Model": (transformers.Swinv2Model, transformers.Swinv2Config),
    "Swinv2ForImageClassification": (transformers.Swinv2ForImageClassification, transformers.Swinv2Config),
}
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 128  # 32x32 tokens, window 4: every stage keeps at least one window (transformers 5 needs it)



def build(name: str):
    model_class, config_class = CLASSES[name]
    config = config_class(image_size=SIZE, patch_size=4, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4],
                          window_size=4, num_labels=5)
    torch.manual_seed(0)
    model = model_class(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith(("logit_scale", ".bias")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def own_forward(hf, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = hf(pixel_values=x)
    return out.logits if getattr(out, "logits", None) is not None else out.pooler_output.flatten(1)


def zeroed(hf, report) -> torch.nn.Module:
    """The original with the value rows (and value bias) of the heads `report` removes zeroed,
    through transformers' own module layout: those heads then add nothing."""
    from dimap_struct.models.adapters.hf_swin import _attention_parts

    ref = copy.deepcopy(hf)
    backbone = getattr(ref, "swin", None) or getattr(ref, "swinv2", None) or ref
    layers = [layer for stage in backbone.encoder.layers for layer in stage.blocks]
    with torch.no_grad():
        for layer, row in zip(layers, report.blocks):
            module, (_, _, v), _ = _attention_parts(layer)
            d = v.out_features // module.num_attention_heads
            for h in set(range(module.num_attention_heads)) - set(row.kept_heads):
                v.weight[h * d:(h + 1) * d] = 0
                if v.bias is not None:
                    v.bias[h * d:(h + 1) * d] = 0
    return ref


CASES = [(name, r) for name in ("SwinForImageClassification", "Swinv2ForImageClassification") for r in (0.8, 0.5, 0.3)]
CASES += [("SwinModel", 0.3), ("Swinv2Model", 0.5)]  # the base models share the classifiers' blocks


@pytest.mark.parametrize("name,ratio", CASES)
def test_pruned_model_runs_in_transformers_and_equals_the_masked_original(name, ratio):
    original = build(name)
    # the paper's rule cuts heads at every ratio (the default may keep every head of a random model)
    result = dimap_struct.compress(original, ratio, criterion="dimap-paper")
    report = result.report
    assert report.verification["mask_equivalence_max_abs_diff"] <= 1e-4
    assert abs(report.achieved.ratio - ratio) <= 0.01
    hf = result.model.hf
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        assert torch.allclose(own_forward(hf, x), result.model(x), atol=1e-6)
    # heads below 0.5 (torch-pruning's failing case): every attention's bookkeeping follows its cut
    for layer_row, site in zip(report.blocks, result.selection.plan.heads):
        assert layer_row.heads == len(site)
    heads = [m.num_attention_heads for m in hf.modules() if hasattr(m, "num_attention_heads")]
    assert sorted(heads) == sorted(r.heads for r in report.blocks)


@pytest.mark.parametrize("name", ["SwinForImageClassification", "Swinv2Model"])
def test_removed_heads_are_the_zeroed_ones(name):
    original = build(name)
    heads_only = dimap_struct.compress(original, 0.85, min_mlp=10_000)  # MLP floors at full width
    assert all(r.mlp_width == r.mlp_width_before for r in heads_only.report.blocks)
    assert any(r.heads < r.heads_before for r in heads_only.report.blocks)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    reference = zeroed(original, heads_only.report)
    assert (own_forward(heads_only.model.hf, x) - own_forward(reference, x)).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["SwinForImageClassification", "Swinv2ForImageClassification"])
@pytest.mark.parametrize("ratio", [0.8, 0.3])
def test_residual_channels_too(name, ratio):
    original = build(name)
    result = dimap_struct.compress(original, ratio, prune_embed=True)
    assert result.report.verification["mask_equivalence_max_abs_diff"] <= 1e-4
    assert abs(result.report.achieved.ratio - ratio) <= 0.01
    assert result.report.residual is not None
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(own_forward(result.model.hf, x), result.model(x), atol=1e-6)


@pytest.mark.parametrize("name", ["SwinModel", "Swinv2ForImageClassification"])
def test_onnx_equals_transformers_forward_at_batch_1_and_3(name, tmp_path):
    embed = name == "Swinv2ForImageClassification"
    result = dimap_struct.compress(build(name), 0.5, prune_embed=embed, output=tmp_path / "m.onnx")
    assert result.report.onnx.graph == "lean"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "logits"
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        ours = session.run(None, {"input": x.numpy()})[0]
        assert np.abs(ours - own_forward(result.model.hf, x).numpy()).max() <= 1e-4


def test_a_save_pretrained_directory_through_the_cli(tmp_path, capsys):
    build("SwinForImageClassification").save_pretrained(tmp_path / "model")
    out = tmp_path / "x.onnx"
    assert cli.main([f"hf:{tmp_path / 'model'}", "--flops", "0.5", "--no-pretrained", "-o", str(out),
                     "--save-pt", str(tmp_path / "x.pt"), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["achieved"]["ratio"] - 0.5) <= 0.01
    rebuilt = dimap_struct.load_pruned(tmp_path / "x.pt")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - own_forward(rebuilt.hf, x).numpy()).max() <= 1e-4


def test_pretrained_weights_come_from_the_directory(tmp_path):
    original = build("Swinv2ForImageClassification")
    original.save_pretrained(tmp_path / "model")
    loaded = dimap_struct.load_model(f"hf:{tmp_path / 'model'}")
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.allclose(loaded.model(x), own_forward(original, x), atol=1e-6)
    assert loaded.data_config["input_size"] == (3, SIZE, SIZE)


def test_a_backbones_features_keep_their_width():
    from dimap_struct.errors import UserError

    with pytest.raises(UserError, match="returns its last stage's features"):
        dimap_struct.compress(build("SwinModel"), 0.5, prune_embed=True)


@pytest.mark.parametrize("case", ["no-config", "not-cached-offline", "unsupported-architecture", "no-transformers"])
def test_bad_input_is_one_line(case, tmp_path, monkeypatch, capsys):
    if case == "no-config":
        (tmp_path / "empty").mkdir()
        args, words = [f"hf:{tmp_path / 'empty'}"], ["has no config.json"]
    elif case == "not-cached-offline":
        from huggingface_hub import constants

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        args, words = ["hf:microsoft/swin-tiny-patch4-window7-224"], ["not in the Hugging Face cache",
                                                                      "huggingface-cli download"]
    elif case == "unsupported-architecture":
        transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            image_size=32)).save_pretrained(tmp_path / "vit")
        args, words = [f"hf:{tmp_path / 'vit'}"], ["not supported", "SwinForImageClassification"]
    else:
        monkeypatch.setitem(sys.modules, "transformers", None)
        args, words = ["hf:microsoft/swin-tiny-patch4-window7-224"], ["pip install"]
    capsys.readouterr()  # save_pretrained's own progress output
    assert cli.main(args + ["--no-pretrained"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
