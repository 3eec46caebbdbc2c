"""The options object: one place for defaults and checks, recipes that reproduce a run, and a
criterion added in one file (this one)."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import dimap_struct
from dimap_struct import CompressOptions, UserError
from dimap_struct.cli import bench as cli_bench
from dimap_struct.cli import compress as cli
from dimap_struct.cli import eval as cli_eval
from dimap_struct.cli import finetune as cli_finetune
from dimap_struct.options import BenchOptions, EvalOptions, FinetuneOptions, load_recipe
from dimap_struct.prune.criteria import (GroupScores, Score, criterion_names, per_group, register, residual_by_views,
                                         unregister)

BAD = [  # (option overrides, words the one-line message must hold)
    ({"min_mlp": -1}, ["--min-mlp", ">= 0"]),
    ({"min_heads": -2}, ["--min-heads", ">= 0"]),
    ({"policy": "one-module-per-ms"}, ["one-module-per-ms", "needs --latency"]),
    ({"round_to": 2.5}, ["--round-to", "integer"]),
    ({"calib_batches": -3}, ["--calib-batches", ">= 1"]),
    ({"calib_batches": 0}, ["--calib-batches", ">= 1"]),
    ({"seed": 10**20}, ["--seed", "<= 9223372036854775807"]),
    ({"seed": -1}, ["--seed", ">= 0"]),
    ({"opset": 9}, ["--opset", ">= 14"]),
    ({"criterion": "dimapp"}, ["--criterion", "dimap", "did you mean"]),
    ({"score_mode": "both"}, ["--score", "group, weight"]),
    ({"granularity": "channel"}, ["--granularity", "structured, weight"]),
    ({"flops": "1.5"}, ["--flops", "0 < R <= 1"]),
    ({"flops": "nan"}, ["--flops"]),
    ({"flops": "abc"}, ["--flops", "7.3G"]),
    ({"params": "0.5"}, ["--params", "--granularity weight"]),
    ({"granularity": "weight", "params": "2"}, ["--params", "0 < R <= 1"]),
    ({"granularity": "weight", "min_mlp": 4}, ["--min-mlp", "structured"]),
    ({"criterion": "taylor"}, ["--calib-data"]),
    ({"criterion": "l1", "score_mode": "weight"}, ["--score", "l1"]),
    ({"prune_embed": "yes"}, ["--prune-embed", "true or false"]),
    ({"checkpoint": "x.pth", "pretrained": False}, ["--checkpoint", "--no-pretrained"]),
    ({"min_mlpp": 8}, ["unknown option 'min_mlpp'", "did you mean 'min_mlp'"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[",".join(o) for o, _ in BAD])
def test_every_invalid_option_is_one_line_from_the_api(overrides, words):
    with pytest.raises(UserError) as info:
        CompressOptions.make(**overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("overrides,words", BAD[:12], ids=[",".join(o) for o, _ in BAD[:12]])
def test_the_same_checks_hold_in_a_recipe_file(tmp_path, capsys, overrides, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {"model": "reference", **overrides}.items()))
    code = cli.main(["--config", str(recipe), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err


def test_the_same_checks_hold_for_flags(capsys):
    code = cli.main(["reference", "--min-mlp", "-1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "dimap-compress: error: --min-mlp must be an integer >= 0, got -1"


def test_compress_validates_its_keywords():
    with pytest.raises(UserError, match="min_mlp"):
        dimap_struct.compress("reference", 0.5, min_mlpp=3)
    with pytest.raises(UserError, match="--flops"):
        dimap_struct.compress("reference", "two")


@pytest.mark.parametrize("text,words", [
    ("recipe_version: 7\nmodel: reference\n", ["recipe format 7", "format 1"]),
    ("model: reference\nflopz: 0.5\n", ["unknown option 'flopz'", "did you mean 'flops'"]),
    ("- just\n- a list\n", ["mapping"]),
    ("model: [unclosed\n", ["does not parse"]),
    ("command: dimap-bench\nbatch: [1]\n", ["recipe for dimap-bench"]),
])
def test_bad_recipes_are_one_line(tmp_path, capsys, text, words):
    recipe = tmp_path / "r.yml"
    recipe.write_text(text)
    code = cli.main(["--config", str(recipe), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_missing_recipe_is_one_line(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "--config not found" in capsys.readouterr().err
    assert cli.main(["--config", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def _initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_recipe_from_a_report_reproduces_plan_and_weights(tmp_path, capsys):
    """The issue's acceptance check: compress, then --config with the recipe of a.json -> b.onnx."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli.main(["reference", "--flops", "0.5", "--criterion", "lamp-global", "--min-mlp", "12",
                     "-o", str(a), "--quiet", "--json"]) == 0
    capsys.readouterr()
    report = json.loads(a.with_suffix(".json").read_text())
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(report["recipe"]))
    assert cli.main(["--config", str(recipe), "-o", str(b), "--quiet", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["recipe"] == report["recipe"]
    assert [blk["kept_heads"] for blk in again["blocks"]] == [blk["kept_heads"] for blk in report["blocks"]]
    assert again["architecture"] == report["architecture"]
    ia, ib = _initializers(a), _initializers(b)
    assert ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)
    # the ONNX metadata holds the same full recipe
    assert dimap_struct.deploy.onnx_file.read_report(b).recipe == report["recipe"]


def test_flags_override_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: reference\nflops: 0.7\ncriterion: l2\n")
    assert cli.main(["--config", str(recipe), "--flops", "0.6", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recipe"]["flops"] == "0.6" and report["recipe"]["criterion"] == "l2"
    assert abs(report["achieved"]["ratio"] - 0.6) < 0.01


@pytest.mark.parametrize("options,parser", [(CompressOptions, cli.build_parser), (EvalOptions, cli_eval.build_parser),
                                            (FinetuneOptions, cli_finetune.build_parser),
                                            (BenchOptions, cli_bench.build_parser)])
def test_help_shows_the_declared_defaults(options, parser):
    text = " ".join(parser().format_help().split())
    shown = 0
    for f in options.specs():
        spec = f.metadata["spec"]
        if spec.flag == "" or spec.positional or isinstance(f.default, bool):
            continue
        if isinstance(f.default, (int, float, str)):
            assert f"(default: {f.default})" in text, f.name
            shown += 1
    assert shown >= 3


def test_every_registered_criterion_is_a_cli_choice():
    text = " ".join(cli.build_parser().format_help().split()).replace("- ", "-")
    for name in criterion_names():
        assert name in text


def test_other_commands_take_recipes_too(tmp_path):
    recipe = tmp_path / "ft.yaml"
    recipe.write_text("model: reference\nepochs: 0.5\nlr: 0.001\nmin_mlp: 16\n")
    options = FinetuneOptions.make(load_recipe(recipe, "dimap-finetune"))
    assert options.training().epochs == 0.5 and options.pruning().min_mlp == 16
    with pytest.raises(UserError, match="--lr"):
        FinetuneOptions(model="reference", lr=float("nan"))
    with pytest.raises(UserError, match="--batch"):
        BenchOptions(models=["a.onnx"], batch=[0])
    assert EvalOptions(model="reference").recipe()["command"] == "dimap-eval"


# -- a toy criterion: everything it needs is declared here, in one file --------------------

def _fc1_bias(blocks, context) -> GroupScores:
    """Heads by their qkv L1 norm, MLP channels by |fc1 bias| (a deliberately odd rule)."""
    l1 = per_group(blocks, lambda views: torch.cat([v.to(torch.float64) for v in views], 1).abs().sum(1))
    return GroupScores(heads=l1.heads, mlp=[b.mlp.fc1.bias.detach().abs().to(torch.float64) for b in blocks])


@pytest.fixture
def toy_criterion():
    register(Score("toy-bias", _fc1_bias, "heads by L1, channels by |fc1 bias|",
                   residual_score=residual_by_views(lambda views: views[0].abs().sum(1).to(torch.float64))))
    yield "toy-bias"
    unregister("toy-bias")


def test_a_criterion_added_in_one_file_runs_everywhere(toy_criterion, capsys, tmp_path):
    result = dimap_struct.compress("reference", 0.5, criterion=toy_criterion, policy="module-aware", prune_embed=True)
    assert result.report.criterion == result.report.score == toy_criterion
    assert result.report.policy == "module-aware"
    assert result.report.verification["mask_equivalence_max_abs_diff"] <= 1e-4
    assert abs(result.report.achieved.ratio - 0.5) <= 0.01
    # the channels it keeps are the ones its own score ranks highest (beyond the floor)
    model = dimap_struct.load_model("reference").model
    bias = [blk.mlp.fc1.bias.detach().abs() for layer in model.layers for blk in layer.blocks]
    for b, kept in zip(bias, result.selection.plan.mlp):
        dropped = sorted(set(range(len(b))) - set(kept))
        if dropped:
            assert b[dropped].max() <= b[kept].min()
    assert cli.main(["reference", "--criterion", toy_criterion, "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["criterion"] == toy_criterion


def test_a_null_value_means_the_default():
    """A recipe's `steps: null` (or an API keyword given as None) is the option's default, so rules
    between options never see None where the default is a number (found by test_properties)."""
    from dimap_struct.options import FinetuneOptions

    options = FinetuneOptions.make({"model": "reference", "flops": 0.5, "prune_steps": None, "calib_images": None})
    assert options.prune_steps == 1 and options.calib_images == 256
