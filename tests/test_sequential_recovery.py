"""`--recovery sequential` (recover/sequential.py): each kept layer, in forward order, is the ridge
solution on the pruned model's own inputs against the dense layer's outputs."""
from __future__ import annotations

import copy

import pytest
import torch

from dimap_struct.recover.sequential import layer_pairs, recover_sequential
from shared_data import mnist_dir


def _tiny_swin():
    from dimap_struct.prune.replay import load_any

    return load_any("swin_tiny_patch4_window7_224", pretrained=False,
                    model_kwargs=dict(img_size=64, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                                      num_classes=5))


def _pruned(loaded, **options):
    from dimap_struct.pipeline import compress

    result = compress(loaded, 0.5, recovery="none", **options)
    return result.model, result.selection.plan


def _inputs_and_outputs(model, layer, images):
    """Every token's input of `layer` in `model` (with a constant 1), and its output."""
    seen = {}

    def hook(module, args, output):
        seen["x"] = args[0].reshape(-1, args[0].shape[-1]).double()
        seen["y"] = output.reshape(-1, output.shape[-1]).double()

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        model(images)
    handle.remove()
    return torch.cat([seen["x"], torch.ones(len(seen["x"]), 1, dtype=torch.float64)], 1), seen["y"]


def test_each_layer_is_the_ridge_solution_on_the_pruned_inputs():
    """Brute force: after recovery, a layer's [W b] equals Y^T X (X^T X + D)^-1 computed from
    every token of the recovered model's inputs and the dense model's outputs (D: lambda on the
    features' diagonal, 0 on the constant's)."""
    loaded = _tiny_swin()
    pruned, plan = _pruned(loaded)
    dense = loaded.model.eval()
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    adapter = loaded.adapter.__class__
    ridge = 1e-2
    rows = recover_sequential(dense, pruned, adapter(dense).blocks(), adapter(pruned).blocks(), plan, images,
                              ridge, batch_size=4, per_image=10**6)
    layers = layer_pairs(adapter(dense).blocks(), adapter(pruned).blocks(), plan)
    assert [row["name"] for row in rows] == [layer.name for layer in layers]
    assert {name.rsplit(".", 1)[1] for name in (row["name"] for row in rows)} == {"qkv", "proj", "fc1", "fc2"}
    checked = 0
    for layer, row in zip(layers, rows):
        if not row["kept"]:  # e.g. an uncut layer before any cut: nothing to correct
            assert row["error_recovered"] == row["error_cut"]
            continue
        x, _ = _inputs_and_outputs(pruned, layer.pruned, images)
        _, y = _inputs_and_outputs(dense, layer.dense, images)
        y = y if layer.rows is None else y[:, layer.rows]
        p = x.T @ x
        damp = torch.full((len(p),), ridge * float(p.diagonal()[:-1].mean()), dtype=p.dtype)
        damp[-1] = 0  # the bias is not damped
        expected = torch.linalg.solve(p + torch.diag(damp), (y.T @ x).T).T
        got = torch.cat([layer.pruned.weight.double(), layer.pruned.bias.double()[:, None]], 1)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
        assert row["error_recovered"] < row["error_cut"]
        checked += 1
    assert checked >= 4


def test_a_removed_attention_keeps_its_branch_mean():
    """With every head of a block gone, its proj has no input: the refit sets its bias to the
    dense branch's mean output, the best constant."""
    loaded = _tiny_swin()
    dense = loaded.model.eval()
    pruned = copy.deepcopy(dense)
    from dimap_struct.prune.cut import cut
    from dimap_struct.prune.select import Plan

    blocks = loaded.adapter.blocks()
    heads = [list(range(b.attn.num_heads)) for b in blocks]
    heads[1] = []
    plan = Plan(blocks=[b.name for b in blocks], heads=heads, mlp=[list(range(b.mlp.width)) for b in blocks])
    adapter = loaded.adapter.__class__(pruned)
    cut(pruned, adapter, plan, (3, 64, 64))
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    recover_sequential(dense, pruned, loaded.adapter.blocks(), adapter.blocks(), plan, images, 0.1, per_image=10**6)
    _, y = _inputs_and_outputs(dense, blocks[1].attn.proj, images)
    torch.testing.assert_close(adapter.blocks()[1].attn.proj.bias.double(), y.mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(mnist_dir() is None, reason="needs ../shared/data/mnist")
def test_the_pipeline_records_a_sequential_recovery_that_lowers_the_error():
    from dimap_struct.models import load_model
    from dimap_struct.pipeline import compress
    from dimap_struct.prune.calibration import calibration_images

    loaded = load_model("reference")
    held = calibration_images(str(mnist_dir()), loaded.data_config, 96, seed=5)
    with torch.no_grad():
        unpruned = loaded.model(held)
    errors = {}
    for method in ("none", "sequential"):
        result = compress(loaded, 0.5, calib_data=str(mnist_dir()), calib_images=64, recovery=method)
        with torch.no_grad():
            errors[method] = float(((result.model(held) - unpruned) ** 2).mean())
    recovery = result.report.recovery
    assert recovery["method"] == "sequential" and recovery["ridge"] == 0.1
    assert any(layer["name"].endswith(".qkv") for layer in recovery["layers"])
    assert errors["sequential"] < 0.5 * errors["none"], errors
