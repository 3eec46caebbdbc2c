"""--save-pt / load_pruned: the pruned PyTorch model survives a round trip without pickled code."""
import json

import pytest
import torch

import dimap_struct
from dimap_struct.cli import compress as cli
from dimap_struct.models.checkpoint import SPEC_KEY
from dimap_struct.prune.replay import load_pruned

NARROW = {"embed_dim": 48, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24]}  # constructor options replayed too


@pytest.mark.parametrize("embed", [False, True])
def test_round_trip_is_exact(random_model, tmp_path, embed):
    pt = tmp_path / "m.pt"
    result = dimap_struct.compress(random_model("swin_t"), 0.5, prune_embed=embed, save_pt=pt, round_to=8)
    rebuilt = dimap_struct.load_pruned(pt)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), result.model(x))
    # plain safetensors: the spec is JSON in the header, no pickle anywhere
    from safetensors import safe_open

    with safe_open(str(pt), framework="pt") as f:
        spec = json.loads(f.metadata()[SPEC_KEY])
    assert spec["architecture"]["source_model"] == "swin_tiny_patch4_window7_224"
    assert spec["architecture"]["heads"] == result.selection.plan.head_counts


def test_cli_save_then_compress_further_and_eval(tmp_path, capsys):
    pt = tmp_path / "r.pt"
    assert cli.main(["reference", "--flops", "0.6", "--save-pt", str(pt), "--quiet", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    out = tmp_path / "r2.onnx"
    assert cli.main(["--from-pt", str(pt), "--flops", "0.5", "-o", str(out), "--quiet", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["original"]["macs"] == first["pruned"]["macs"]
    assert abs(second["achieved"]["ratio"] - 0.5) <= 0.01 and out.exists()


def test_bad_pruned_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    assert cli.main(["--from-pt", str(junk), "--quiet"]) == 2
    assert "not a pruned checkpoint" in capsys.readouterr().err
    assert cli.main(["--quiet"]) == 2
    assert "--from-pt" in capsys.readouterr().err


def test_other_image_size_prunes_exports_and_reloads(tmp_path):
    """A Swin built for 160x160 with window 5 (and, for time, narrow and shallow): pruned,
    exported, recorded, reloaded exactly."""
    out, pt = tmp_path / "s.onnx", tmp_path / "s.pt"
    result = dimap_struct.compress("swin_t", 0.5, pretrained=False, output=out, save_pt=pt,
                                   model_kwargs={"img_size": 160, "window_size": 5, **NARROW})
    assert result.report.data_config["input_size"] == [3, 160, 160]
    from dimap_struct.deploy.onnx_file import read_report

    assert read_report(out).data_config["input_size"] == [3, 160, 160]
    assert abs(result.report.achieved.ratio - 0.5) <= 0.01
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(load_pruned(pt)(x), result.model(x))


@pytest.mark.parametrize("name, kwargs, shape", [
    ("reference", {}, (1, 32, 32)),
    ("swin_t", {"img_size": 160, "window_size": 5, **NARROW}, (3, 160, 160)),
])
def test_pruning_a_pruned_checkpoint_again_reloads(tmp_path, name, kwargs, shape):
    """--from-pt then --save-pt: the second checkpoint keeps the source's constructor options."""
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    dimap_struct.compress(name, 0.7, pretrained=False, save_pt=first, model_kwargs=kwargs)
    result = dimap_struct.compress(str(first), 0.7, save_pt=second)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_pruned(second)(x), result.model(x))
