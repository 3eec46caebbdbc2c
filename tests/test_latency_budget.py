"""`--latency R`: the per-block latency model (prune/latency.py) and the budget search on it,
with synthetic timings (real timing in tests is unstable); bad input."""
import numpy as np
import pytest

import dimap_struct
from dimap_struct.cli import compress as cli
from dimap_struct.prune import latency as lat
from dimap_struct.prune.latency import LatencyModel, fit_stage, with_fixed_part
from test_select_synthetic import CHANNELS, HEADS, _costs, _scores
from dimap_struct.prune.select import select_to_budget

TRUE = [0.05, 0.001, 0.2, 0.003, 0.0004]  # ms per feature (1, c, h, h*c, m*c)


def _samples(noise: float = 0.0):
    rng = np.random.default_rng(0)
    from dimap_struct.deploy.latency_probe import configurations

    return [{"heads": h, "mlp": m, "width": c,
             "ms": float(np.dot(TRUE, lat.features(h, m, c)) * (1 + noise * rng.standard_normal()))}
            for h, m, c in configurations(8, 256, 64)]


def test_the_fit_recovers_a_linear_latency_exactly():
    stage = fit_stage(_samples())
    assert np.allclose(stage.coefficients, TRUE, rtol=1e-6, atol=1e-9)


def test_a_noisy_fit_never_predicts_a_slower_smaller_block():
    samples = _samples()
    samples[1]["ms"] *= 3  # fewer heads timed slower: plain least squares would give k2 < 0
    stage = fit_stage(samples)
    assert min(stage.coefficients) >= 0
    assert stage.block_ms(4, 128, 64) <= stage.block_ms(8, 256, 64)


def test_the_timed_widths_determine_every_coefficient():
    with pytest.raises(ValueError, match="independently"):
        fit_stage([{"heads": 2, "mlp": 8 * k, "width": 32, "ms": float(k)} for k in range(1, 7)])


def _model(fixed_ms: float = 1.0) -> LatencyModel:
    stages = [lat.StageLatency([0.01, 0.0, 0.5 * (i + 1), 0.0, 0.0]) for i in range(3)]
    for s in stages:  # one MLP channel costs 0.02 ms (c = 1 in this model)
        s.coefficients[4] = 0.02
    dense = sum(s.block_ms(h, m, 1) for s, h, m in zip(stages, HEADS, CHANNELS)) + fixed_ms
    return with_fixed_part({"test": True}, stages, [0, 1, 2], [1, 1, 1], list(HEADS), list(CHANNELS), dense)


def test_the_fixed_part_makes_the_dense_prediction_exact():
    model = _model(fixed_ms=2.5)
    assert model.fixed_ms == pytest.approx(2.5)
    assert model.predict(list(HEADS), list(CHANNELS)) == pytest.approx(model.dense_ms)
    assert model.unpruned_ms == pytest.approx(model.dense_ms)


def test_blocks_that_overshoot_the_whole_model_set_the_scale_of_the_budget():
    """Blocks timed alone can sum to more than the measured model; the fixed part is then 0 and a
    budget is a fraction of the blocks' sum, the scale every plan is predicted on."""
    over = _model(fixed_ms=0.0)
    shrunk = with_fixed_part({"test": True}, over.stages, [0, 1, 2], [1, 1, 1], list(HEADS), list(CHANNELS),
                             0.8 * over.dense_ms)
    assert shrunk.fixed_ms == 0.0
    assert shrunk.unpruned_ms == pytest.approx(over.dense_ms) == pytest.approx(shrunk.predict(list(HEADS), list(CHANNELS)))
    assert LatencyModel.from_dict(shrunk.to_dict()).unpruned_ms == pytest.approx(shrunk.unpruned_ms)


@pytest.mark.parametrize("policy", ["module-aware", "one-module", "distortion", "bound-split"])
@pytest.mark.parametrize("ratio", [0.85, 0.6, 0.45])
def test_the_search_meets_a_latency_target_as_closely_as_any_knob(policy, ratio):
    model = _model()
    target = ratio * model.dense_ms
    sel = select_to_budget(_scores(), _costs(), head_weights=[40, 50, 60], channel_weights=[8, 8, 8], target_macs=0,
                           policy=policy, min_heads=1, min_mlp=1, cost=model.predict, target_cost=target)
    got = model.predict(sel.plan.head_counts, sel.plan.mlp_widths)
    assert sel.achieved_cost == pytest.approx(got) and sel.target_cost == target
    assert sel.achieved_macs == _costs().count(sel.plan.head_counts, sel.plan.mlp_widths).macs
    # brute force over the policy's knob: no plan it can produce lands closer to the target
    scan = [abs(model.predict(*_plan_counts(policy, q)) - target) for q in np.linspace(0, 1, 801)]
    assert abs(got - target) <= min(scan) + 1e-9


def _plan_counts(policy, q):
    from dimap_struct.prune.select import POLICIES, _Module

    costs = _costs()
    scores = _scores()
    modules = [_Module(scores.heads, [40, 50, 60], 1, [b.macs_per_head for b in costs.blocks],
                       scores.distortion.heads),
               _Module(scores.mlp, [8, 8, 8], 1, [b.macs_per_channel for b in costs.blocks], scores.distortion.mlp)]
    return POLICIES[policy](modules, [1, 1]).kept_counts(float(q))


def test_latency_and_flops_together_are_refused(capsys):
    assert cli.main(["reference", "--latency", "0.5", "--flops", "0.5"]) == 2
    assert "either --flops or --latency" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_a_latency_outside_0_1_is_refused(value, capsys):
    assert cli.main(["reference", f"--latency={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--latency must be a number > 0 and <= 1" in err[0]


def test_a_latency_below_the_minimums_names_the_nearest(monkeypatch, capsys):
    from dimap_struct.deploy import latency_probe

    def fake(model, adapter, input_size, batch=1, threads=2, **kw):
        blocks = adapter.blocks()
        stages = sorted({b.stage for b in blocks})
        per_stage = [lat.StageLatency([0.0, 0.0, 0.1, 0.0, 0.001]) for _ in stages]
        heads = [b.attn.num_heads for b in blocks]
        widths = [b.mlp.width for b in blocks]
        blocks_sum = sum(0.1 * h + 0.001 * m for h, m in zip(heads, widths))
        # Measured whole model faster than its blocks timed alone, as on swin_t/s/b.
        return with_fixed_part({}, per_stage, [b.stage for b in blocks], [1] * len(stages), heads, widths,
                               0.6 * blocks_sum), "measured"

    monkeypatch.setattr(latency_probe, "load_or_measure", fake)
    assert cli.main(["reference", "--latency", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "allow no less than" in err and len(err.strip().splitlines()) == 1
    result = dimap_struct.compress("reference", latency=0.97)
    assert result.report.latency["target"] == 0.97
    assert abs(result.report.latency["predicted_ratio"] - 0.97) <= 0.01
    # The budget's scale is the model's own prediction for the unpruned plan, not the measured dense time.
    latency = result.report.latency
    assert latency["predicted_unpruned_ms"] == pytest.approx(latency["dense_ms"] / 0.6)
    assert abs(latency["predicted_ms"] / latency["predicted_unpruned_ms"] - 0.97) <= 0.01
    assert result.report.latency["model_source"] == "measured"
