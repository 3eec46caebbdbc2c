"""The lean export (models/lean.py): the same function as each family's own forward, dense and
pruned, at batch 1 and 3; its index formulas against brute force; no shape arithmetic in the
graph; the plain graph, with a note, where no lean form exists."""
import collections

import onnx
import pytest
import timm
import torch
import torchvision

import dimap_struct
from dimap_struct.deploy.export import export_form
from dimap_struct.models.lean import LeanUnsupported, lean_model, shift_mask, window_order
from dimap_struct.models.adapters import adapter_for_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
FAMILIES = {
    "timm v1": lambda: timm.create_model("swin_tiny_patch4_window7_224", **SMALL),
    "timm v1, window per stage (S3)": lambda: timm.create_model(
        "swin_s3_tiny_224", embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)),
    "timm v2": lambda: timm.create_model("swinv2_tiny_window8_256", **SMALL),
    "timm v2-CR (extra norms)": lambda: timm.create_model("swinv2_cr_tiny_ns_224", **SMALL),
    "torchvision v1": lambda: torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[7, 7]),
    "torchvision v2": lambda: torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[8, 8],
        block=torchvision.models.swin_transformer.SwinTransformerBlockV2,
        downsample_layer=torchvision.models.swin_transformer.PatchMergingV2),
    "reference (CIFAR-10 shape)": lambda: timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2, 2, 2),
        num_heads=(1, 2, 2, 4), num_classes=10),
}


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random init with non-trivial norms, biases and temperatures (v2 zero-inits its post-norms)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("logit_scale", "q_bias", "v_bias", ".bias")) or "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()



def _input_size(model):
    return tuple(adapter_for_model(model).data_config()["input_size"])


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, size, batch: int) -> float:
    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lean_form_equals_the_families_forward(family):
    torch.manual_seed(0)
    model = perturbed(FAMILIES[family]())
    size = _input_size(model)
    dense = lean_model(model, adapter_for_model(model), size)
    pruned = dimap_struct.compress(model, 0.5).model
    pruned_lean = lean_model(pruned, adapter_for_model(pruned), size)
    for batch in (1, 3):
        assert _max_diff(dense, model, size, batch) <= 1e-4
        assert _max_diff(pruned_lean, pruned, size, batch) <= 1e-4


@pytest.mark.parametrize("family", ["timm v1", "reference (CIFAR-10 shape)"])  # the families with residual pruning
def test_lean_form_of_a_model_with_narrower_residual_streams(family):
    torch.manual_seed(0)
    model = perturbed(FAMILIES[family]())
    pruned = dimap_struct.compress(model, 0.5, prune_embed=True).model
    size = _input_size(model)
    assert _max_diff(lean_model(pruned, adapter_for_model(pruned), size), pruned, size, 3) <= 1e-4


def test_window_order_is_roll_then_partition():
    for grid, window, shift in [((8, 8), (4, 4), (2, 2)), ((6, 9), (3, 3), (1, 1)), ((4, 8), (2, 4), (0, 2))]:
        h, w = grid
        ids = torch.arange(h * w).view(1, h, w, 1)
        rolled = torch.roll(ids, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        expected = timm.models.swin_transformer.window_partition(rolled, window).reshape(-1)
        assert torch.equal(window_order(grid, window, shift), expected)


def test_shift_mask_matches_timm_and_torchvision():
    block = timm.models.swin_transformer.SwinTransformerBlock(dim=8, input_resolution=(8, 12), num_heads=2,
                                                              window_size=4, shift_size=2)
    assert torch.equal(shift_mask((8, 12), (4, 4), (2, 2)), block.attn_mask)
    from dimap_struct.models.adapters.torchvision_swin import _shift_mask

    assert torch.equal(shift_mask((8, 12), (4, 4), (2, 2)), _shift_mask(torch.zeros(1), 8, 12, (4, 4), (2, 2)))


def test_the_lean_graph_has_no_shape_arithmetic(tmp_path):
    torch.manual_seed(0)
    model = perturbed(FAMILIES["timm v1"]())
    lean_out, plain_out = tmp_path / "lean.onnx", tmp_path / "plain.onnx"
    lean = dimap_struct.compress(model, 0.5, output=lean_out)
    dimap_struct.compress(model, 0.5, output=plain_out, plain_export=True)
    ops = collections.Counter(n.op_type for n in onnx.load(str(lean_out)).graph.node)
    plain_ops = collections.Counter(n.op_type for n in onnx.load(str(plain_out)).graph.node)
    assert lean.report.onnx.graph == "lean" and lean.report.onnx.parity_max_abs_diff <= 1e-4
    assert ops["Shape"] == 0 and ops["Mod"] == 0 and ops["Pad"] == 0 and ops["Slice"] == 0
    assert plain_ops["Shape"] > 0
    assert sum(ops.values()) < sum(plain_ops.values()) / 2


def test_a_padded_resolution_exports_the_plain_graph_with_a_note(tmp_path, monkeypatch):
    from dimap_struct.deploy import export

    monkeypatch.setattr(export, "_slim", lambda proto: proto)  # which graph, not its simplification (6 s here)
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=192, **SMALL).eval()  # 48x48 tokens, window 7
    with pytest.raises(LeanUnsupported, match="not a multiple of the window"):
        lean_model(model, adapter_for_model(model), (3, 192, 192))
    _, graph, why = export_form(model, (3, 192, 192))
    assert graph == "plain" and "window" in why
    result = dimap_struct.compress(model, 0.5, output=tmp_path / "m.onnx")
    assert result.report.onnx.graph == "plain"
    assert any("plain graph" in note for note in result.report.notes)
