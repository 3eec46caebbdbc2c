"""One-shot recovery from calibration images (dimap_struct.recover.oneshot): the refit's
algebra against direct least squares, exactness in the full-rank case, lower error than the
plain cut on held-out images, the guard against a degenerate refit, and the report."""
import json

import pytest
import torch

from dimap_struct.prune.calibration import LayerStats, collect_stats, layer_seed
from dimap_struct.recover.oneshot import recover, solve
from shared_data import mnist_dir


def _stats(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> LayerStats:
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    return LayerStats(xa.T @ xa, len(x), weight.double(), bias.double())


def test_refit_is_least_squares_on_the_kept_inputs():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(500, 12, generator=gen), torch.randn(5, 12, generator=gen), torch.randn(5, generator=gen)
    kept = [0, 2, 3, 7, 11]
    new_w, new_b, before, after = solve(_stats(x, w, b), kept, None, "refit", ridge=0.0)
    # the same problem solved directly: min ||[x_K 1] A^T - (x w^T + b)||^2
    design = torch.cat([x[:, kept], torch.ones(500, 1)], 1).double()
    target = (x @ w.T + b).double()
    direct = torch.linalg.lstsq(design, target).solution.T
    assert torch.allclose(new_w, direct[:, :-1], atol=1e-8) and torch.allclose(new_b, direct[:, -1], atol=1e-8)
    assert after < before
    plain = ((x[:, kept] @ w[:, kept].T + b - target.float()) ** 2).sum(1).mean()
    assert before == pytest.approx(float(plain), rel=1e-4)  # the error formula is the mean squared error


def test_refit_is_exact_when_the_kept_inputs_span_the_removed_ones():
    """Full rank: every removed input is a linear combination of kept ones, so the refit
    reproduces the unpruned output on the calibration set (relative error < 1e-9)."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    mix = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    x = torch.cat([base, base @ mix], 1)  # inputs 6..9 depend on 0..5
    w, b = torch.randn(3, 10, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    new_w, new_b, before, after = solve(_stats(x, w, b), list(range(6)), None, "refit", ridge=0.0)
    target = x @ w.T + b
    rebuilt = x[:, :6] @ new_w.T + new_b
    assert float((rebuilt - target).norm() / target.norm()) < 1e-9
    assert after <= 1e-12 * before


def test_bias_compensation_moves_the_mean_contribution():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 8, generator=gen) + 3.0
    w, b = torch.randn(4, 8, generator=gen), torch.randn(4, generator=gen)
    new_w, new_b, before, after = solve(_stats(x, w, b), [0, 1, 2, 3], None, "bias", ridge=0.0)
    assert torch.allclose(new_w, w[:, :4].double())
    assert torch.allclose(new_b, (b + w[:, 4:] @ x[:, 4:].mean(0)).double(), atol=1e-4)
    assert after < before


def test_a_degenerate_refit_is_refused():
    """A damping that shrinks the weights to nothing makes the refit worse than the plain cut:
    the plain cut is kept, and its error reported for both."""
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(200, 6, generator=gen), torch.randn(2, 6, generator=gen), torch.zeros(2)
    new_w, _, before, after = solve(_stats(x, w, b), [0, 1, 2], None, "refit", ridge=1e9)
    assert after == before and torch.allclose(new_w, w[:, :3].double())


@pytest.mark.skipif(mnist_dir() is None, reason="needs ../shared/data/mnist")
def test_recovery_lowers_the_error_on_held_out_images():
    from dimap_struct.models import load_model
    from dimap_struct.pipeline import compress
    from dimap_struct.prune.calibration import calibration_images

    loaded = load_model("reference")
    images = calibration_images(str(mnist_dir()), loaded.data_config, 384, seed=0)
    calib, held = images[:256], images[256:]
    stats = collect_stats(loaded.model, loaded.adapter.blocks(), calib)
    with torch.no_grad():
        unpruned = loaded.model(held)
    errors = {}
    for method in ("none", "refit"):
        result = compress(loaded, 0.5, criterion="dimap-paper")
        layers = recover(loaded.adapter.__class__(result.model).blocks(), result.selection.plan, stats, method,
                         1e-3, None)
        with torch.no_grad():
            errors[method] = float(((result.model(held) - unpruned) ** 2).mean())
        if method == "refit":
            assert all(layer["error_recovered"] < layer["error_cut"] for layer in layers)
    assert errors["refit"] < 0.5 * errors["none"], errors


@pytest.mark.skipif(mnist_dir() is None, reason="needs ../shared/data/mnist")
def test_report_and_metadata_record_the_recovery(tmp_path):
    from dimap_struct.deploy.onnx_file import read_report
    from dimap_struct.pipeline import compress

    out = tmp_path / "r.onnx"
    result = compress("reference", 0.5, calib_data=str(mnist_dir()), calib_images=64, output=out)
    recovery = result.report.recovery
    assert recovery["method"] == "refit" and recovery["images"] == 64 and len(recovery["data_sha256"]) == 64
    assert recovery["error_recovered"] < recovery["error_cut"]
    assert read_report(out).recovery == recovery
    assert json.loads(out.with_suffix(".json").read_text())["recovery"] == recovery
    assert compress("reference", 0.5).report.recovery is None  # data-free: nothing changes


def _tiny_swin():
    from dimap_struct.prune.replay import load_any

    return load_any("swin_tiny_patch4_window7_224", pretrained=False,
                    model_kwargs=dict(img_size=64, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 4),
                                      num_classes=5))


def test_statistics_do_not_depend_on_the_batch_size_or_chunking():
    loaded = _tiny_swin()
    images = torch.randn(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    blocks = loaded.adapter.blocks()
    by_batch = [collect_stats(loaded.model, blocks, images, batch_size=b, tokens_per_image=8, chunk_rows=c)
                for b, c in ((1, 2048), (5, 16), (12, 7), (2, 40))]
    for name, first in by_batch[0].items():
        assert first.tokens == 12 * 8
        for other in by_batch[1:]:
            assert other[name].tokens == first.tokens
            torch.testing.assert_close(other[name].gram, first.gram, rtol=1e-5, atol=1e-4)


def test_statistics_are_the_gram_of_the_layer_inputs():
    """With every token kept, G equals [X 1]^T [X 1] of the inputs a hook records directly."""
    loaded = _tiny_swin()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    blocks = loaded.adapter.blocks()
    seen = {}
    layer = blocks[1].mlp.fc2
    handle = layer.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        loaded.model.eval()(images)
    handle.remove()
    stats = collect_stats(loaded.model, blocks, images, batch_size=4, tokens_per_image=10_000)
    xa = torch.cat([seen["x"], torch.ones(len(seen["x"]), 1)], 1).double()
    name = f"{blocks[1].name}.fc2"
    assert stats[name].tokens == len(xa)
    torch.testing.assert_close(stats[name].gram, xa.T @ xa, rtol=1e-5, atol=1e-3)


def test_sampled_tokens_are_rows_of_their_own_image():
    """Replaying each layer's seeded draws picks rows of the directly recorded inputs whose Gram
    matrix is the statistics' G (images in two batches)."""
    loaded = _tiny_swin()
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    blocks = loaded.adapter.blocks()
    layers = [(f"{block.name}.{kind}", getattr(block.attn if kind == "proj" else block.mlp, kind))
              for block in blocks for kind in ("proj", "fc2")]
    seen = {name: [] for name, _ in layers}
    handles = [layer.register_forward_pre_hook(lambda m, a, name=name: seen[name].append(a[0]))
               for name, layer in layers]
    with torch.no_grad():
        loaded.model.eval()(images)
    for h in handles:
        h.remove()
    stats = collect_stats(loaded.model, blocks, images, batch_size=4, tokens_per_image=5, seed=3)
    for i, (name, _) in enumerate(layers):
        x = seen[name][0].reshape(6, -1, seen[name][0].shape[-1])
        stream = torch.Generator().manual_seed(layer_seed(3, i))
        pick = torch.rand(x.shape[:2], generator=stream).argsort(dim=1)[:, :5]
        rows = torch.cat([x[img, pick[img]] for img in range(6)])
        xa = torch.cat([rows, torch.ones(len(rows), 1)], 1).double()
        torch.testing.assert_close(stats[name].gram, xa.T @ xa, rtol=1e-5, atol=1e-3)


def test_data_fingerprint_follows_file_names_and_sizes(tmp_path):
    import hashlib

    from dimap_struct.data import data_fingerprint

    for relative, size in (("b/2.jpg", 3), ("a/1.jpg", 5), ("a-b/x.jpg", 1), ("a/sub/y.jpg", 2), (".hidden", 4)):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"\0" * size)
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a/1.jpg")  # a link to a file counts, with its target's size
    (tmp_path / "dirlink").symlink_to(tmp_path / "a")  # a link to a folder is not followed
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "missing")  # a broken link is skipped
    reference = hashlib.sha256()  # brute force: pathlib's order, part by part
    for f in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        reference.update(f"{f.relative_to(tmp_path)}\0{f.stat().st_size}\n".encode())
    assert data_fingerprint(tmp_path) == reference.hexdigest()
    before = data_fingerprint(tmp_path)
    (tmp_path / "a/1.jpg").write_bytes(b"\0" * 6)
    assert data_fingerprint(tmp_path) != before
