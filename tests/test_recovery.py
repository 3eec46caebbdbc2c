"""One-shot recovery from calibration images (dimap_struct.recover.oneshot): the refit's
algebra against direct least squares, exactness in the full-rank case, lower error than the
plain cut on held-out images, the guard against a degenerate refit, and the report."""
import json

import pytest
import torch

from dimap_struct.recover.oneshot import LayerStats, collect_stats, recover, solve
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
    from dimap_struct.recover.oneshot import calibration_images

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
