"""Every supported family (narrow, shallow variants by default: small_models.py; released
"small" models with -m slow), end to end at R = 0.5: mask equivalence, MACs on target and equal to
torch's own count, ONNX parity; unsupported families are refused with a clear UserError.

Models are seeded random inits whose per-head tensors (logit scales, q/v biases) and norms are
perturbed, so a surgery that kept the wrong slice of them would change the output. The
zeroed reference is the *unconverted* original (the family's own forward), zeroed through the
module layout directly: a removed head's value rows and value bias, a removed MLP channel's
fc1 row and bias.
"""
import copy
import os
import urllib.error

import pytest
import timm
import torch
import torchvision

import dimap_struct
from dimap_struct.cli import compress as cli
from dimap_struct.models import load_model

from macs import torch_counted_macs
from small_models import SMALL_FAMILIES, small

DEFAULT = [
    "swinv2_tiny_window8_256",
    "swinv2_cr_tiny_ns_224",
    "torchvision:swin_t",
    "torchvision:swin_v2_t",
    "swin_s3_tiny_224",  # timm v1 adapter, a different window per stage
]
SLOW = ["swinv2_small_window8_256", "swinv2_cr_small_ns_224", "torchvision:swin_s", "torchvision:swin_v2_s"]
FAMILIES = DEFAULT + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]
TV = "torchvision:"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here: with another job on this 2-core machine, two threads made a
    forward pass about 20x slower (3.9 s instead of 0.18 s for swinv2_tiny), not 2x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str) -> torch.nn.Module:
    """The default list at its narrow size (small_models.py), the slow list at its released size."""
    torch.manual_seed(0)
    if name in SMALL_FAMILIES:
        model = small(name)
    elif name.startswith(TV):
        model = torchvision.models.get_model(name[len(TV):], weights=None)
    else:
        model = timm.create_model(name, pretrained=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("logit_scale", "q_bias", "v_bias")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            # Swin v2 (timm, CR) initialises its post-norms to zero: every block would then be
            # the identity and no pruning could change the output
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=gen))
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # explicit matmuls, so FlopCounterMode sees q.k^T and attn.v
    return model.eval()


def zero_like_plan(model: torch.nn.Module, plan) -> None:
    """Zero the value rows / bias of removed heads and the fc1 rows / bias of removed channels."""
    with torch.no_grad():
        for name, heads, channels in zip(plan.blocks, plan.heads, plan.mlp):
            block = model.get_submodule(name)
            attn = block.attn
            h_all = attn.num_heads
            d = attn.qkv.out_features // (3 * h_all)
            for h in set(range(h_all)) - set(heads):
                rows = slice(2 * h_all * d + h * d, 2 * h_all * d + (h + 1) * d)
                attn.qkv.weight[rows] = 0
                if attn.qkv.bias is not None:
                    attn.qkv.bias[rows] = 0
                if getattr(attn, "v_bias", None) is not None:
                    attn.v_bias[h * d:(h + 1) * d] = 0
            fc1 = block.mlp[0] if isinstance(block.mlp, torch.nn.Sequential) else block.mlp.fc1
            drop = sorted(set(range(fc1.out_features)) - set(channels))
            fc1.weight[drop] = 0
            fc1.bias[drop] = 0


def attentions(model: torch.nn.Module, plan) -> list[torch.nn.Module]:
    return [model.get_submodule(name).attn for name in plan.blocks]


@pytest.fixture(scope="module", params=FAMILIES)
def compressed(request, tmp_path_factory):
    """(name, original, result) for one family, compressed once with ONNX export."""
    name = request.param
    if name in SLOW and not _slow_enabled(request.config):
        pytest.skip("large model: run with -m slow or DIMAP_SLOW=1")
    original = build(name)
    out = tmp_path_factory.mktemp(name.replace(":", "_")) / "m.onnx"
    # the paper's rule cuts heads and channels alike (the default may keep every head of a random model)
    result = dimap_struct.compress(original, 0.5, criterion="dimap-paper", output=out)
    return name, original, result


def _slow_enabled(config) -> bool:
    return os.environ.get("DIMAP_SLOW") == "1" or "slow" in (config.option.markexpr or "")


def test_mask_equivalence_and_target(compressed):
    name, original, result = compressed
    report, plan = result.report, result.selection.plan
    assert report.verification["mask_equivalence_max_abs_diff"] <= 1e-4
    assert abs(report.achieved.ratio - 0.5) <= 0.01
    assert sum(plan.head_counts) < sum(a.num_heads for a in attentions(original, plan))

    # independently of verify.zero_removed, against the family's own (unconverted) forward
    size = tuple(report.data_config["input_size"])
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(7))
    reference = copy.deepcopy(original)
    zero_like_plan(reference, plan)
    with torch.no_grad():
        diff = (result.model(x) - reference(x)).abs().max().item()
    assert diff <= 1e-4, f"{name}: {diff:.3g}"


def test_onnx_parity(compressed):
    _, _, result = compressed
    assert result.onnx_path.is_file() and result.json_path.is_file()
    assert result.report.onnx.parity_max_abs_diff <= 1e-3


def test_analytic_macs_match_torch_flop_counter(compressed):
    name, original, result = compressed
    report = result.report
    size = tuple(report.data_config["input_size"])
    assert size == ((3, 256, 256) if "v2" in name and "cr" not in name else (3, 224, 224))
    assert report.original.macs == torch_counted_macs(original, size)
    assert report.original.params == sum(p.numel() for p in original.parameters())
    assert report.pruned.macs == torch_counted_macs(result.model, size)
    assert report.pruned.params == sum(p.numel() for p in result.model.parameters())


def test_heads_keep_their_scale(compressed):
    """Kept heads keep their logit scale (v2) or 1/sqrt(d) (v1); bookkeeping is consistent;
    the caller's model is untouched (adapters convert attention classes on a copy)."""
    _, original, result = compressed
    plan = result.selection.plan
    for before, after, heads in zip(attentions(original, plan), attentions(result.model, plan), plan.heads):
        d = before.qkv.out_features // (3 * before.num_heads)
        assert after.num_heads == len(heads) and after.qkv.out_features == 3 * len(heads) * d
        assert after.proj.in_features == len(heads) * d
        if hasattr(before, "logit_scale"):
            assert torch.equal(after.logit_scale.detach(), before.logit_scale.detach()[heads])
        elif hasattr(before, "scale"):
            assert after.scale == before.scale
        else:  # torchvision v1: scale from head_dim, which must stay the original width
            assert after.head_dim == d
        assert type(before).__module__.split(".")[0] in ("timm", "torchvision")


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "pvt_v2_b0", "maxvit_tiny_tf_224"])
def test_unsupported_family_is_a_user_error(capsys, name):
    code = cli.main([name, "--no-pretrained"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "not a supported model yet" in lines[0]
    for family in ("timm Swin v1", "timm Swin v2", "Swin v2 CR", "torchvision Swin"):
        assert family in lines[0], lines[0]


@pytest.mark.parametrize("name, needles", [
    ("torchvision:swin_tt", ["unknown model", "torchvision:swin_t"]),
    ("torchvision:resnet18", ["not a supported model yet"]),
    ("swin_v2_t", ["unknown model", "torchvision:swin_v2_t"]),
])
def test_torchvision_names(capsys, name, needles):
    code = cli.main([name, "--no-pretrained"])
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in needles:
        assert needle in err, err


def test_torchvision_pretrained_offline_is_a_user_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(dimap_struct.UserError, match="--checkpoint PATH.*--no-pretrained"):
        load_model("torchvision:swin_t")


def test_torchvision_checkpoint_and_data_config(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.get_model("swin_t", weights=None)  # the released size: the file names it
    path = tmp_path / "swin_t.pth"
    torch.save({"model": source.state_dict()}, path)
    loaded = load_model("torchvision:swin_t", checkpoint=path, seed=5)
    mine = loaded.model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in source.state_dict().items())
    assert loaded.weights.startswith("checkpoint swin_t.pth")
    cfg = loaded.data_config
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
