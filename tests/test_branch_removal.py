"""Whole-branch removal (`--min-heads 0`, `--min-mlp 0`): a block that keeps no head, or no MLP
channel, equals the original with that branch's groups zeroed, in torch and in the lean ONNX
graph; the lean graph holds no attention (Softmax, window gathers) and no zero-width MatMul for a
removed branch, only a constant add. For every family: a block without attention, a block
without MLP, a block without either, and a stage where every block lost its attention."""
import collections
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import dimap_struct
from dimap_struct.models.adapters import adapter_for_model
from dimap_struct.models.lean import lean_model
from dimap_struct.prune.cut import cut
from dimap_struct.prune.select import Plan
from dimap_struct.prune.verify import mask
from test_hf_swin import build as build_hf
from test_lean_export import FAMILIES, perturbed

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALL = {**{name: (lambda f=f: perturbed(f())) for name, f in FAMILIES.items()},
       "transformers v1": lambda: build_hf("SwinForImageClassification"),
       "transformers v2": lambda: build_hf("Swinv2ForImageClassification")}


def branchless_plan(adapter) -> Plan:
    """Block 0: no attention; block 1: no MLP; every block of stage 2: no attention; the last
    block: neither. Other blocks keep all but one group where they can."""
    blocks = adapter.blocks()
    heads = [list(range(b.attn.num_heads)) for b in blocks]
    mlp = [list(range(0, b.mlp.width, 2)) for b in blocks]
    heads[0], mlp[1], heads[-1], mlp[-1] = [], [], [], []
    for b, site in enumerate(blocks):
        if site.stage == 2:
            heads[b] = []
    return Plan([b.name for b in blocks], heads, mlp)


def _size(model):
    return tuple(adapter_for_model(model).data_config()["input_size"])


def _run(module, x):
    with torch.no_grad():
        out = module(x)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("family", list(ALL))
def test_removed_branches_equal_the_masked_model_in_torch_and_in_the_lean_graph(family, tmp_path):
    torch.manual_seed(0)
    model = ALL[family]()
    adapter = adapter_for_model(model)
    size, plan = _size(model), branchless_plan(adapter)
    reference = copy.deepcopy(adapter.model)
    mask(reference, adapter_for_model(reference), plan)
    cut(adapter.model, adapter, plan, size)
    after = adapter_for_model(adapter.model).blocks()
    assert [b.attn.num_heads for b in after] == plan.head_counts
    assert [b.mlp.width for b in after] == plan.mlp_widths
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(2))
    pruned = _run(adapter.model, x)
    assert float((pruned - _run(reference, x)).abs().max()) <= 1e-4

    lean = lean_model(adapter.model, adapter_for_model(adapter.model), size)
    assert float((_run(lean, x) - pruned).abs().max()) <= 1e-4
    path = tmp_path / "lean.onnx"
    torch.onnx.export(lean, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    with_attention = sum(h > 0 for h in plan.head_counts)
    assert ops["Softmax"] == with_attention
    assert all(0 not in init.dims for init in graph.initializer)  # no zero-width weight is left
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xb = torch.randn(batch, *size, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"input": xb.numpy()})[0]
        assert np.abs(got - _run(adapter.model, xb).numpy()).max() <= 1e-4


def test_the_pipeline_removes_whole_branches_when_the_floors_allow_it(tmp_path):
    result = dimap_struct.compress("reference-cifar10", 0.15, min_heads=0, min_mlp=0, output=tmp_path / "m.onnx",
                                   save_pt=tmp_path / "m.pt")
    model = result.model
    plan = result.selection.plan
    assert 0 in plan.head_counts  # (whole MLPs go at lower budgets; the family tests cut them)
    assert result.report.onnx.graph == "lean" and result.report.onnx.parity_max_abs_diff <= 1e-4
    assert abs(result.selection.achieved_macs / result.selection.original_macs - 0.15) <= 0.01
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)
    assert ops["Softmax"] == sum(h > 0 for h in plan.head_counts)
    rebuilt = dimap_struct.load_pruned(tmp_path / "m.pt")  # the checkpoint rebuilds the headless blocks
    x = torch.randn(2, *_size(model), generator=torch.Generator().manual_seed(4))
    assert torch.equal(_run(rebuilt.model if hasattr(rebuilt, "model") else rebuilt, x), _run(model, x))


def test_removed_branches_with_narrower_residual_streams():
    """--prune-embed beside removed branches: the zero-width projections lose their residual
    columns / rows like any other, and the model still equals its masked original."""
    from dimap_struct.models import load_model

    loaded = load_model("reference")
    adapter, size = loaded.adapter, tuple(loaded.data_config["input_size"])
    plan = branchless_plan(adapter)
    plan.residual = [list(range(0, site.width, 2)) for site in adapter.residual_sites()]
    reference = copy.deepcopy(adapter.model)
    mask(reference, adapter_for_model(reference), plan)
    cut(adapter.model, adapter, plan, size)
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(3))
    assert float((_run(adapter.model, x) - _run(reference, x)).abs().max()) <= 1e-4
    lean = lean_model(adapter.model, adapter_for_model(adapter.model), size)
    assert float((_run(lean, x) - _run(adapter.model, x)).abs().max()) <= 1e-4
