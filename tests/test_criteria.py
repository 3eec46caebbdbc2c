"""Criteria: same surgery and MACs search for all, only the ranking differs."""
import copy

import pytest
import torch

import dimap_struct
from dimap_struct.cli import compress as cli
from dimap_struct.prune.criteria import CRITERIA, score
from shared_data import mnist_dir as default_data_dir
from dimap_struct.models import wrap_model
from dimap_struct.prune.scoring import dimap_weight_scores

MNIST = default_data_dir()
needs_mnist = pytest.mark.skipif(MNIST is None, reason="the shared MNIST directory (../shared/data/mnist) is absent")


def _compress(model, criterion, **kw):
    if CRITERIA[criterion].needs_data:
        if MNIST is None:
            pytest.skip("taylor needs the shared MNIST directory for calibration")
        kw.update(calib_data=MNIST, calib_batches=1)
    return dimap_struct.compress(model, kw.pop("flops", 0.5), criterion=criterion, **kw)


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_every_criterion_is_mask_equivalent_and_on_target(random_model, criterion):
    result = _compress(random_model("swin_t"), criterion)
    report = result.report
    assert report["criterion"] == criterion
    assert report["verification"]["mask_equivalence_max_abs_diff"] <= 1e-4
    assert abs(report["achieved"]["ratio"] - 0.5) <= 0.01
    assert report["selection"]["policy"] == CRITERIA[criterion].policy


def test_cli_names_every_criterion():
    assert set(cli.CRITERION_NAMES) == set(CRITERIA)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_uniform_criteria_prune_every_block_alike(random_model, criterion):
    plan = _compress(random_model("swin_t"), criterion).selection.plan
    blocks = wrap_model(copy.deepcopy(random_model("swin_t"))).adapter.blocks()
    mlp_ratios = [w / b.mlp.width for w, b in zip(plan.mlp_widths, blocks)]
    assert max(mlp_ratios) - min(mlp_ratios) <= 2 / min(b.mlp.width for b in blocks)
    removed = 1 - mlp_ratios[0]
    for h, b in zip(plan.head_counts, blocks):  # heads: the same ratio, rounded per block (>= 1 kept)
        H = b.attn.num_heads
        assert h == 1 or abs((1 - h / H) - removed) <= 0.5 / H + 0.5 / b.mlp.width + 1e-9
    # within a block the kept channels are the largest by norm
    scores = score(criterion, blocks)
    for s, kept in zip(scores.mlp, plan.mlp):
        dropped = sorted(set(range(len(s))) - set(kept))
        if dropped:
            assert s[dropped].max() <= s[kept].min()


def test_random_is_seeded(random_model):
    model = random_model("swin_t")
    a = _compress(model, "random", seed=1).selection.plan
    b = _compress(model, "random", seed=1).selection.plan
    c = _compress(model, "random", seed=2).selection.plan
    assert a.heads == b.heads and a.mlp == b.mlp
    assert a.mlp != c.mlp


def test_lamp_global_has_one_threshold_across_modules(random_model):
    model = random_model("swin_t")
    result = _compress(model, "lamp-global")
    blocks = wrap_model(copy.deepcopy(model)).adapter.blocks()
    scores = score("lamp-global", blocks)
    removed, kept = [], []
    for kind_scores, kind_plan, protect in ((scores.heads, result.selection.plan.heads, 1),
                                            (scores.mlp, result.selection.plan.mlp, 8)):
        for s, keep in zip(kind_scores, kind_plan):
            best = set(torch.argsort(s, descending=True, stable=True)[:protect].tolist())
            removed += [float(s[i]) for i in range(len(s)) if i not in keep]
            kept += [float(s[i]) for i in keep if i not in best]
    assert max(removed) <= min(kept)


def test_dimap_cost_divides_by_group_macs(random_model):
    result = _compress(random_model("swin_t"), "dimap-cost")
    from dimap_struct.prune.costs import build_cost_model

    loaded = wrap_model(copy.deepcopy(random_model("swin_t")))
    blocks = loaded.adapter.blocks()
    costs = build_cost_model(loaded.model, loaded.adapter, blocks, (3, 224, 224))
    base, cost = score("dimap", blocks), score("dimap-cost", blocks, costs=costs)
    for b, bc in enumerate(costs.blocks):
        assert torch.allclose(cost.heads[b] * bc.macs_per_head, base.heads[b])
        assert torch.allclose(cost.mlp[b] * bc.macs_per_channel, base.mlp[b])
    assert result.report["achieved"]["on_target"]


# ---------------------------------------------------------------- paper-faithful weight mode

@pytest.fixture(scope="module")
def weight_half(random_model):
    return dimap_struct.compress(random_model("swin_t"), granularity="weight", params=0.5)


def test_weight_mode_zeroes_half_of_every_module(weight_half):
    modules = weight_half.report["modules"]
    for m in modules.values():
        assert m["kept_fraction"] == pytest.approx(0.5, abs=1e-6)
    blocks = wrap_model(weight_half.model).adapter.blocks()
    layers = [layer for b in blocks for layer in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    assert zeros == pytest.approx(sum(layer.weight.numel() for layer in layers) / 2, abs=3)


def test_weight_mode_keeps_magnitude_order_inside_each_layer(random_model, weight_half):
    original = wrap_model(copy.deepcopy(random_model("swin_t"))).adapter.blocks()
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


def test_weight_mode_flops_target(random_model):
    result = dimap_struct.compress(random_model("swin_t"), 0.7, granularity="weight")
    report = result.report
    assert abs(report["achieved"]["ratio"] - 0.7) <= 0.01
    kept = [m["kept_fraction"] for m in report["modules"].values()]
    assert max(kept) - min(kept) < 1e-6
    assert any("NOT faster" in n for n in report["notes"])


# ---------------------------------------------------------------- CLI bad input and plot

def _err(capsys, *args):
    code = cli.main(list(args))
    return code, capsys.readouterr().err.strip()


def test_cli_refusals(capsys):
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--criterion", "magnitude")
    assert code == 2 and "dimap, l1, l2" in err and len(err.splitlines()) == 1
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--criterion", "taylor")
    assert code == 2 and "--calib-data" in err and len(err.splitlines()) == 1
    for extra in (["--round-to", "8"], ["--criterion", "l1"], ["--min-mlp", "16"]):
        code, err = _err(capsys, "swin_t", "--no-pretrained", "--granularity", "weight", *extra)
        assert code == 2 and "only apply to structured" in err, extra
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--params", "0.5")
    assert code == 2 and "--granularity weight" in err
    code, err = _err(capsys, "swin_t", "--no-pretrained", "--granularity", "weight", "--params", "2")
    assert code == 2 and "--params" in err


def test_cli_report_names_criterion_and_plots(capsys, tmp_path):
    png = tmp_path / "blocks.png"
    code = cli.main(["swin_t", "--no-pretrained", "--criterion", "l2", "--plot", str(png), "--compare", "dimap",
                     "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "l2: group L2 norm" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.png"]
