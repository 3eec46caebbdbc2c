"""`--latency R`: the measured latency table (prune/latency.py), the chains the probe times,
and the budget search on the table, with synthetic timings (real timing in tests is unstable);
bad input."""
from pathlib import Path

import numpy as np
import pytest
import torch

import dimap_struct
from dimap_struct.cli import compress as cli
from dimap_struct.deploy import latency_probe
from dimap_struct.models.adapters import adapter_for_model
from dimap_struct.prune.latency import LatencyModel, StageTable, mlp_grid, monotone, with_fixed_part
from dimap_struct.prune.select import select_to_budget
from small_models import small
from test_select_synthetic import CHANNELS, HEADS, _costs, _scores


def linear_table(heads: int, mlp: int, per_head: float, per_channel: float, width: int = 1,
                 steps: int = 16) -> StageTable:
    widths = mlp_grid(mlp, steps)
    return StageTable([per_head * h for h in range(heads + 1)], widths, [per_channel * m for m in widths], width)


def test_the_table_interpolates_between_its_grid_points_and_scales_with_the_residual_width():
    table = StageTable([0.0, 1.0, 1.5], [0, 8, 16], [0.0, 2.0, 3.0], width=32)
    assert table.block_ms(2, 16, 32) == 4.5
    assert table.block_ms(1, 12, 32) == pytest.approx(1.0 + 2.5)  # halfway between 8 and 16
    assert table.block_ms(0, 4, 32) == pytest.approx(1.0)
    assert table.block_ms(2, 16, 16) == pytest.approx(4.5 / 2)
    assert table.head_saving(2) == pytest.approx(0.5) and table.channel_saving(12) == pytest.approx(1 / 8)


def test_noisy_timings_become_a_cost_that_never_grows_as_groups_go():
    assert monotone([0.0, 0.3, 0.2, -0.1, 0.5]) == [0.0, 0.3, 0.3, 0.3, 0.5]
    assert monotone([0.0, -0.2, 0.1]) == [0.0, 0.0, 0.1]


def test_the_mlp_grid_runs_from_0_to_the_width_in_sixteenths():
    assert mlp_grid(64) == list(range(0, 65, 4))
    assert mlp_grid(8) == list(range(9))


@pytest.mark.parametrize("family", ["swin_tiny_patch4_window7_224", "torchvision:swin_v2_t"])
def test_the_probe_times_a_chain_per_stage_at_every_head_count_and_mlp_width(family, monkeypatch):
    """Every chain runs at its shape (branches removed included); the table is the chain's time
    over the baseline per block; the fixed part makes the dense prediction the measured one."""
    calls = []

    def fake_time(modules, shape, threads, **kw):
        modules = [latency_probe.built(module) for module in modules]
        for module in modules:
            with torch.no_grad():
                out = module(torch.zeros(*shape))
            assert tuple(out.shape[1:]) == ((1000,) if len(shape) == 4 else tuple(shape[1:]))
        calls.extend([shape] * len(modules))
        return [0.05 + 1e-4 * sum(p.numel() for p in module.parameters()) for module in modules]

    monkeypatch.setattr(latency_probe, "_time_modules", fake_time)
    adapter = adapter_for_model(small(family))
    size = tuple(adapter.data_config()["input_size"])
    model = latency_probe._measure(adapter.lean_spec(size), size, 1, 2, {}, lambda text: None)
    blocks = adapter.blocks()
    for stage, table in enumerate(model.stages):
        first = next(b for b in blocks if b.stage == stage)
        assert len(table.heads_ms) == first.attn.num_heads + 1 and table.mlp_widths == mlp_grid(first.mlp.width)
        assert table.heads_ms[0] == 0 and table.mlp_ms[0] == 0 and table.heads_ms[-1] > 0 < table.mlp_ms[-1]
    assert len(calls) == sum(len(t.heads_ms) + len(t.mlp_ms) - 1 for t in model.stages) + 2  # + dense and skeleton
    for table in model.stages:
        # the fake time is linear in the parameters, which grow by the same amount per head and per
        # MLP channel once the branch exists: a table split at the wrong place would not be linear
        assert np.allclose(np.diff(table.heads_ms[1:]), np.diff(table.heads_ms[1:])[0])
        assert np.allclose(np.diff(table.mlp_ms[1:]) / np.diff(table.mlp_widths[1:]),
                           (table.mlp_ms[-1] - table.mlp_ms[1]) / (table.mlp_widths[-1] - table.mlp_widths[1]))
        assert table.heads_ms[1] > np.diff(table.heads_ms[1:])[0]  # the first head pays the branch's norm and proj bias
    assert 0 < model.fixed_ms < model.dense_ms and model.scale > 0


@pytest.mark.parametrize("family, heads, mlp", [("swin_tiny_patch4_window7_224", None, 8),
                                               ("swinv2_tiny_window8_256", None, 8),
                                               ("swin_tiny_patch4_window7_224", 0, 8),
                                               ("swinv2_tiny_window8_256", None, 0)])
def test_onnxruntime_runs_the_same_graph_of_a_chain_exported_without_torchs_constant_folding(family, heads, mlp,
                                                                                              tmp_path):
    """The probe exports without torch's constant folding (`export_unit`): onnxruntime optimises
    it into the graph it makes of torch's folded export (the same operators in the same order, the
    same initializer shapes), with branches whole and removed, so the timing is the same."""
    import onnx
    import onnxruntime as ort

    adapter = adapter_for_model(small(family))
    spec = adapter.lean_spec(tuple(adapter.data_config()["input_size"]))
    chain = spec.stages[0].blocks[:2]
    width = latency_probe._width(chain[0])
    grid = (spec.grid[0], spec.grid[1])
    unit = latency_probe._chain_unit(chain, grid, latency_probe._heads(chain[0]) if heads is None else heads, mlp,
                                     width)
    shape = (2, grid[0] * grid[1], width)
    torch.onnx.export(unit, (torch.zeros(*shape),), str(tmp_path / "folded.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"])
    latency_probe.export_unit(unit, shape, tmp_path / "unfolded.onnx")
    graphs = []
    for name in ("folded", "unfolded"):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / f"{name}.run.onnx")
        ort.InferenceSession(str(tmp_path / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(tmp_path / f"{name}.run.onnx")).graph
        graphs.append(([(n.op_type, len(n.input)) for n in graph.node], sorted(tuple(i.dims) for i in graph.initializer)))
    assert graphs[0] == graphs[1]
    exported = [len(onnx.load(str(tmp_path / f"{name}.onnx")).graph.node) for name in ("folded", "unfolded")]
    assert exported[1] > exported[0]  # torch folded something, and onnxruntime the same


def _model(fixed_ms: float = 1.0) -> LatencyModel:
    # one head of stage i costs 0.5 * (i + 1) ms, one MLP channel 0.02 ms (c = 1 in this model)
    stages = [linear_table(h, m, 0.5 * (i + 1), 0.02, steps=m) for i, (h, m) in enumerate(zip(HEADS, CHANNELS))]
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


@pytest.mark.parametrize("policy", ["module-aware", "one-module", "distortion", "bound-split", "one-module-per-ms"])
@pytest.mark.parametrize("ratio", [0.85, 0.6, 0.45])
def test_the_search_meets_a_latency_target_as_closely_as_any_knob(policy, ratio):
    model = _model()
    target = ratio * model.dense_ms
    sel = select_to_budget(_scores(), _costs(), head_weights=[40, 50, 60], channel_weights=[8, 8, 8], target_macs=0,
                           policy=policy, min_heads=1, min_mlp=1, cost=model.predict, target_cost=target,
                           latency=model)
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
    extra = {"latency": _model()} if POLICIES[policy].needs_latency else {}
    return POLICIES[policy](modules, [1, 1], **extra).kept_counts(float(q))


def _greedy_by_hand(scores, model, floors):
    """The per-ms rule written out: repeatedly remove, of every block's lowest-scored head and
    lowest-scored channel still removable, the one with the least score per ms saved."""
    heads = [sorted(float(v) for v in s) for s in scores.heads]
    mlp = [sorted(float(v) for v in s) for s in scores.mlp]
    counts = [[len(h) for h in heads], [len(m) for m in mlp]]
    order = []
    while True:
        best = None
        for kind, groups in enumerate((heads, mlp)):
            for b, left in enumerate(groups):
                removed = len(left) - counts[kind][b]
                if counts[kind][b] <= floors[kind]:
                    continue
                table = model.stages[b]
                saved = (table.head_saving if kind == 0 else table.channel_saving)(counts[kind][b])
                value = (max(left[removed], 0.0) / max(saved, 1e-9), kind, b)
                best = value if best is None or value < best else best
        if best is None:
            return order
        _, kind, b = best
        counts[kind][b] -= 1
        order.append((kind, b, [list(c) for c in counts]))


def test_the_per_ms_policy_is_the_greedy_rule_by_hand():
    from dimap_struct.prune.select import POLICIES, _Module

    model, scores = _whole_branch_model(), _scores()
    modules = [_Module(scores.heads, [40, 50, 60], 0), _Module(scores.mlp, [8, 8, 8], 0)]
    rule = POLICIES["one-module-per-ms"](modules, [0, 0], latency=model)
    steps = _greedy_by_hand(scores, model, [0, 0])
    assert [(i, b) for i, b, _ in rule.sequence] == [(kind, b) for kind, b, _ in steps]
    for k, (_, _, counts) in enumerate(steps, 1):
        assert rule.kept_counts(k / len(steps)) == counts


def _whole_branch_model() -> LatencyModel:
    """Each branch carries 1 ms of overhead that only its last group's removal saves."""
    stages = [StageTable([0.0] + [1.0 + 0.1 * h for h in range(1, heads + 1)], list(range(mlp + 1)),
                         [0.0] + [1.0 + 0.01 * m for m in range(1, mlp + 1)], 1)
              for heads, mlp in zip(HEADS, CHANNELS)]
    dense = sum(s.block_ms(h, m, 1) for s, h, m in zip(stages, HEADS, CHANNELS))
    return with_fixed_part({"test": True}, stages, [0, 1, 2], [1, 1, 1], list(HEADS), list(CHANNELS), dense)


def test_where_branches_cost_more_than_their_groups_the_per_ms_plan_removes_them_whole():
    model = _whole_branch_model()
    sel = select_to_budget(_scores(), _costs(), head_weights=[40, 50, 60], channel_weights=[8, 8, 8], target_macs=0,
                           policy="one-module-per-ms", min_heads=0, min_mlp=0, latency=model,
                           target_cost=0.45 * model.unpruned_ms)  # the costs move in steps of about 1/7 here
    assert abs(sel.achieved_cost / model.unpruned_ms - 0.45) <= 0.01
    assert 0 in sel.plan.head_counts + sel.plan.mlp_widths


def test_the_default_under_latency_ranks_by_score_per_ms(monkeypatch):
    monkeypatch.setattr(latency_probe, "load_or_measure", _fake_probe)
    result = dimap_struct.compress("reference", latency=0.6, min_heads=0, latency_checks=0)
    assert result.report.policy == "one-module-per-ms" and result.selection.policy == "one-module-per-ms"
    assert abs(result.report.latency["predicted_ratio"] - 0.6) <= 0.01
    embed = dimap_struct.compress("reference", latency=0.6, prune_embed=True, latency_checks=0)
    assert embed.report.policy == "one-module-per-mac"  # the per-ms rule ranks heads and channels only


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

    monkeypatch.setattr(latency_probe, "load_or_measure", _fake_probe)
    assert cli.main(["reference", "--latency", "0.02", "--latency-checks", "0"]) == 2
    err = capsys.readouterr().err
    assert "allow no less than" in err and len(err.strip().splitlines()) == 1
    result = dimap_struct.compress("reference", latency=0.97, latency_checks=0)
    assert result.report.latency["target"] == 0.97
    assert abs(result.report.latency["predicted_ratio"] - 0.97) <= 0.01
    # The budget's scale is the model's own prediction for the unpruned plan, not the measured dense time.
    latency = result.report.latency
    assert latency["predicted_unpruned_ms"] == pytest.approx(latency["dense_ms"] / 0.6)
    assert abs(latency["predicted_ms"] / latency["predicted_unpruned_ms"] - 0.97) <= 0.01
    assert result.report.latency["model_source"] == "measured"


def _fake_probe(model, adapter, input_size, batch=1, threads=2, **kw):
    """A probe without timing: 0.1 ms a head and 0.001 ms an MLP channel in every stage, the
    whole model measured 0.6 of its blocks' sum (as on swin_t/s/b, blocks overshoot)."""
    blocks = adapter.blocks()
    stages = sorted({b.stage for b in blocks})
    first = [next(b for b in blocks if b.stage == s) for s in stages]
    per_stage = [linear_table(b.attn.num_heads, b.mlp.width, 0.1, 0.001, width=b.attn.in_features) for b in first]
    heads = [b.attn.num_heads for b in blocks]
    widths = [b.mlp.width for b in blocks]
    blocks_sum = sum(0.1 * h + 0.001 * m for h, m in zip(heads, widths))
    return with_fixed_part({}, per_stage, [b.stage for b in blocks], [b.attn.in_features for b in first], heads,
                           widths, 0.6 * blocks_sum), "measured"


def test_with_a_measured_skeleton_the_blocks_are_scaled_to_the_dense_model():
    """Blocks run slower inside the whole model than in a chain: the fixed part is the measured
    skeleton, and the blocks' sum is scaled so the unpruned plan costs the measured dense model."""
    stages = [linear_table(h, m, 0.5, 0.02, steps=m) for h, m in zip(HEADS, CHANNELS)]
    blocks = sum(s.block_ms(h, m, 1) for s, h, m in zip(stages, HEADS, CHANNELS))
    model = with_fixed_part({}, stages, [0, 1, 2], [1, 1, 1], list(HEADS), list(CHANNELS), 2.0 + 1.25 * blocks,
                            skeleton_ms=2.0)
    assert model.fixed_ms == 2.0 and model.scale == pytest.approx(1.25)
    assert model.predict(list(HEADS), list(CHANNELS)) == pytest.approx(model.dense_ms) == pytest.approx(model.unpruned_ms)
    assert model.predict([0, 0, 0], [0, 0, 0]) == pytest.approx(2.0)  # every branch removed: the skeleton
    assert LatencyModel.from_dict(model.to_dict()).scale == pytest.approx(1.25)


def test_modules_are_timed_in_groups_that_share_one_anchor(monkeypatch):
    """With at most 4 sessions open, 10 modules are timed in groups that each repeat the first; a
    group's load factor cancels through it, so the times are those of one group of 10."""
    monkeypatch.setattr(latency_probe, "SESSIONS_AT_ONCE", 4)
    true_ms = [1.0 + i for i in range(10)]
    groups = []

    def fake_group(paths, x, threads, seconds_each, min_rounds):
        ids = [int(p.stem[4:]) for p in paths]
        groups.append(ids)
        load = 1.0 + 0.5 * len(groups)  # every group runs under another load
        return [true_ms[i] * load for i in ids]

    monkeypatch.setattr(latency_probe, "_time_group", fake_group)
    built = []
    builders = [lambda i=i: built.append(i) or torch.nn.Linear(2, 2) for i in range(10)]
    ms = latency_probe._time_modules(builders, (1, 3, 2), threads=1)
    assert built == list(range(10))  # one module at a time, each once
    assert all(len(g) <= 4 for g in groups) and all(g[0] == 0 for g in groups)
    assert sorted({i for g in groups for i in g}) == list(range(10))
    assert ms == pytest.approx([t * 1.5 for t in true_ms])


def test_checks_select_again_with_the_target_scaled_by_the_measured_error(monkeypatch):
    """The table predicts 1.2 times too little at every plan: the first check measures 0.72 for
    R = 0.6, the target is scaled by 0.6 / 0.72, and the plan selected for that target (the same
    as selecting for 0.5 directly) measures 0.6 and is kept; the report says what each check saw."""
    table = {}

    unpruned = []

    def measured(spec, heads, widths, input_size, batch=1, threads=2, **kw):
        unpruned.append(kw["unpruned"])
        return 1.2 * table["model"].predict(heads, widths) / table["model"].unpruned_ms

    def probe(*args, **kw):
        table["model"], source = _fake_probe(*args, **kw)
        return table["model"], source

    monkeypatch.setattr(latency_probe, "load_or_measure", probe)
    monkeypatch.setattr(latency_probe, "measured_fraction", measured)
    result = dimap_struct.compress("reference", latency=0.6, min_heads=0)
    checks = result.report.latency["checks"]
    assert len(checks) == 2 and checks[0]["target_ratio"] == pytest.approx(0.6)
    assert len(set(unpruned)) == 1 and len(unpruned) == 2  # the unpruned model exported once for both checks
    assert checks[0]["measured_ratio"] == pytest.approx(1.2 * checks[0]["predicted_ratio"])
    assert checks[1]["target_ratio"] == pytest.approx(0.6 * 0.6 / checks[0]["measured_ratio"])
    assert abs(result.report.latency["measured_ratio"] - 0.6) <= 0.02
    direct = dimap_struct.compress("reference", latency=checks[1]["target_ratio"], min_heads=0, latency_checks=0)
    assert result.selection.plan.head_counts == direct.selection.plan.head_counts
    assert result.selection.plan.mlp_widths == direct.selection.plan.mlp_widths
    # one check: the table's plan, measured and kept whatever it measures
    once = dimap_struct.compress("reference", latency=0.6, min_heads=0, latency_checks=1).report.latency
    assert len(once["checks"]) == 1 and once["predicted_ratio"] == pytest.approx(checks[0]["predicted_ratio"])


def test_a_plans_measured_fraction_times_the_plan_against_the_unpruned_model(monkeypatch):
    """`measured_fraction` times two lean models in one call (in turns): the unpruned one and one
    whose blocks have the plan's head counts and MLP widths (0: the branch removed); the fraction
    is the second time over the first."""
    from dimap_struct.models.lean import LeanSwin

    loaded = dimap_struct.load_model("reference")
    input_size = tuple(loaded.data_config["input_size"])
    spec = loaded.adapter.lean_spec(input_size)
    timed, specs = [], []

    def fake_time(modules, shape, threads, seconds_each=0.25, min_rounds=15):
        timed.append((modules, shape, threads))
        return [4.0, 1.0]

    def recording(spec, size):
        specs.append(spec)
        return LeanSwin(spec, size)

    monkeypatch.setattr(latency_probe, "_time_modules", fake_time)
    monkeypatch.setattr(latency_probe, "LeanSwin", recording)
    heads, widths = [2, 0, 3, 1, 4, 8], [54, 50, 0, 117, 262, 0]
    assert latency_probe.measured_fraction(spec, heads, widths, input_size, batch=8, threads=1) == 0.25
    (modules, shape, threads), = timed
    assert shape == (8, *input_size) and threads == 1 and all(isinstance(m, LeanSwin) for m in modules)
    assert specs[0] is spec
    dense, pruned = ([b for stage in s.stages for b in stage.blocks] for s in specs)
    assert [latency_probe._heads(b) for b in dense] == [b.attn.num_heads for b in loaded.adapter.blocks()]
    assert [latency_probe._heads(b) for b in pruned] == heads
    assert [latency_probe._mlp(b) for b in pruned] == widths
    # with the unpruned model's export given, it is timed from that file
    exported = Path("unpruned.onnx")
    latency_probe.measured_fraction(spec, heads, widths, input_size, batch=8, threads=1, unpruned=exported)
    assert timed[-1][0][0] is exported and isinstance(timed[-1][0][1], LeanSwin)
