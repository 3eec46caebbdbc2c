"""The paper-faithful weight mode (--granularity weight): single weights zeroed, one DIMAP
threshold per module (QKV-M, PRJ-M, MLP-M)."""
import copy

import pytest
import torch

import dimap_struct
from dimap_struct.models import wrap_model
from dimap_struct.prune.scoring import dimap_weight_scores

from small_models import small


@pytest.fixture(scope="module")
def swin():
    """swin_t's layout, narrow and shallow (small_models.py): one threshold per module does not
    depend on the width."""
    return small("swin_tiny_patch4_window7_224").eval()


@pytest.fixture(scope="module")
def weight_half(swin):
    return dimap_struct.compress(swin, granularity="weight", params=0.5)


def test_weight_mode_zeroes_half_of_every_module(weight_half):
    modules = weight_half.report.selection["modules"]
    for m in modules.values():
        assert m["kept_fraction"] == pytest.approx(0.5, abs=1e-6)
    blocks = wrap_model(weight_half.model).adapter.blocks()
    layers = [layer for b in blocks for layer in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    assert zeros == pytest.approx(sum(layer.weight.numel() for layer in layers) / 2, abs=3)


def test_weight_mode_keeps_magnitude_order_inside_each_layer(swin, weight_half):
    original = wrap_model(copy.deepcopy(swin)).adapter.blocks()
    pruned = wrap_model(weight_half.model).adapter.blocks()
    for ob, pb in zip(original, pruned):
        for o, p in ((ob.attn.qkv, pb.attn.qkv), (ob.attn.proj, pb.attn.proj), (ob.mlp.fc1, pb.mlp.fc1),
                     (ob.mlp.fc2, pb.mlp.fc2)):
            w, kept = o.weight.detach().abs(), p.weight.detach() != 0
            assert torch.equal(p.weight[kept], o.weight[kept])
            if (~kept).any() and kept.any():
                assert w[~kept].max() <= w[kept].min()
            # and the module threshold is one number: every removed score is below every kept one
            s = dimap_weight_scores(o.weight)
            if (~kept).any() and kept.any():
                assert s[~kept].max() <= s[kept].min()


def test_weight_mode_report_counts(weight_half):
    """Achieved / pruned are effective MACs and non-zero params; the file runs at the dense MACs."""
    report, model = weight_half.report, weight_half.model
    assert report.granularity == "weight"
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert report.achieved.params == report.pruned.params == nonzero
    assert report.achieved.macs == report.pruned.macs < report.original.macs
    assert report.runtime_macs == report.original.macs
    assert report.achieved.kept_prunable_fraction == pytest.approx(0.5, abs=1e-6)


def test_weight_mode_flops_target(swin):
    result = dimap_struct.compress(swin, 0.7, granularity="weight")
    report = result.report
    assert abs(report.achieved.ratio - 0.7) <= 0.01
    modules = report.selection["modules"].values()
    kept = [m["kept_fraction"] for m in modules]
    assert max(kept) - min(kept) <= 1 / min(m["weights"] for m in modules)  # equal, to one weight
    assert any("NOT faster" in n for n in report.notes)
