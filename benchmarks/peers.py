"""The "what a user would pick instead" row: torch-pruning's own pruner on timm Swin models.

For each model (random, seeded weights) and each configuration below, this runs
`tp.pruner.BasePruner` with `tp.importance.GroupMagnitudeImportance(p=2)` and
`ignored_layers=[model.head]`, searching `pruning_ratio` (bisection on deep copies) until the
MACs counted by `tp.utils.count_ops_and_params` land within 0.005 of the target fraction. The
search starts from the README's rule of thumb `1 - sqrt(target)` (both in and out dims shrink);
if that first try already fails, no search is possible and the failure is what gets reported.

  tp-basic        BasePruner with default settings (torch-pruning README, "High-level Pruners").
  tp-heads        + num_heads={qkv: heads}, prune_num_heads=True, prune_head_dims=False,
                  head_pruning_ratio = pruning_ratio, then attn.num_heads = pruner.num_heads[qkv]
                  (examples/transformers/prune_timm_vit.py, head pruning mode).
  tp-swin-recipe  tp-basic + num_heads (head dims, not whole heads), a user-written pruner for
                  timm's PatchMerging and root_module_types=(Linear, LayerNorm, PatchMerging),
                  as examples/transformers/prune_hf_swin.py does for the HF Swin.

With `--hf`, the model is transformers' `SwinForImageClassification` with swin-tiny's config
(random weights) and the configuration is

  tp-hf-swin-recipe  torch-pruning's examples/transformers/prune_hf_swin.py brought to
                  transformers 5 (q_proj / k_proj / v_proj instead of query / key / value, the
                  merging's width read from its reduction): num_heads for q, k and v, a pruner
                  for SwinPatchMerging, root_module_types=(Linear, LayerNorm, SwinPatchMerging),
                  then each attention's head_dim set from q_proj's width, as the example does.

Recorded per run: whether pruning and a batch-1 forward work, MACs and params before/after,
the achieved MACs ratio, the wall time of the final pruning step (pruner construction + step),
whether `torch.onnx.export(dynamo=False, opset_version=17)` works and how far onnxruntime (CPU)
is from PyTorch, the first-block widths of each stage, torch-pruning's warnings, and for a
failure the stage ("prune", "forward", "onnx export", "onnxruntime") and the exception.
Params are sum(p.numel()); accuracy is not measured (random weights).

    .venv/bin/python -m benchmarks.peers
    .venv/bin/python -m benchmarks.peers --models swin_tiny_patch4_window7_224 swin_small_patch4_window7_224
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata as md
import json
import math
import os
import platform
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch
import torch_pruning as tp
from timm.models.swin_transformer import PatchMerging, WindowAttention

from .common import RESULTS
from .common import command as recorded_command

ACCURACY = "n/a (random weights; see accuracy benchmark)"
CONFIGS = ("tp-basic", "tp-heads", "tp-swin-recipe")


class PatchMergingPruner(tp.BasePruningFunc):
    """timm PatchMerging: its LayerNorm / reduction see 4 copies (2x2 patches) of each input channel."""

    def prune_out_channels(self, layer, idxs):
        tp.prune_linear_out_channels(layer.reduction, idxs)
        return layer

    def prune_in_channels(self, layer, idxs):
        copies = [i + k * layer.dim for k in range(4) for i in idxs]
        tp.prune_layernorm_out_channels(layer.norm, copies)
        tp.prune_linear_in_channels(layer.reduction, copies)
        layer.dim -= len(idxs)
        return layer

    def get_out_channels(self, layer):
        return layer.reduction.out_features

    def get_in_channels(self, layer):
        return layer.dim


def attentions(model):
    return [m for m in model.modules() if isinstance(m, WindowAttention)]


class HfLogits(torch.nn.Module):
    """transformers' SwinForImageClassification as images -> logits (what export and ORT need)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x):
        return self.hf(pixel_values=x).logits


class HfPatchMergingPruner(tp.BasePruningFunc):
    """transformers' SwinPatchMerging: LayerNorm then reduction over 4 copies (2x2) of each channel."""

    def prune_out_channels(self, layer, idxs):
        tp.prune_linear_out_channels(layer.reduction, idxs)
        return layer

    def prune_in_channels(self, layer, idxs):
        dim = layer.reduction.in_features // 4
        copies = [i + k * dim for k in range(4) for i in idxs]
        tp.prune_layernorm_out_channels(layer.norm, copies)
        tp.prune_linear_in_channels(layer.reduction, copies)
        return layer

    def get_out_channels(self, layer):
        return layer.reduction.out_features

    def get_in_channels(self, layer):
        return layer.reduction.in_features // 4


def hf_attentions(model):
    from transformers.models.swin.modeling_swin import SwinAttention

    return [m for m in model.modules() if isinstance(m, SwinAttention)]


def make_hf_pruner(model, x, ratio):
    from transformers.models.swin.modeling_swin import SwinPatchMerging

    heads = {}
    for a in hf_attentions(model):
        heads.update({a.q_proj: a.num_attention_heads, a.k_proj: a.num_attention_heads,
                      a.v_proj: a.num_attention_heads})
    return tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                pruning_ratio=ratio, ignored_layers=[model.hf.classifier], num_heads=heads,
                                customized_pruners={SwinPatchMerging: HfPatchMergingPruner()},
                                root_module_types=(torch.nn.Linear, torch.nn.LayerNorm, SwinPatchMerging))


def make_pruner(model, x, config, ratio):
    if config == "tp-hf-swin-recipe":
        return make_hf_pruner(model, x, ratio)
    kw = {}
    if config in ("tp-heads", "tp-swin-recipe"):
        kw["num_heads"] = {a.qkv: a.num_heads for a in attentions(model)}
    if config == "tp-heads":
        kw.update(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)
    if config == "tp-swin-recipe":
        kw.update(customized_pruners={PatchMerging: PatchMergingPruner()},
                  root_module_types=(torch.nn.Linear, torch.nn.LayerNorm, PatchMerging))
    return tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                pruning_ratio=ratio, ignored_layers=[model.head], **kw)


def widths(model):
    """'C/qkv_out/mlp_hidden/heads' of the first block of each stage."""
    if isinstance(model, HfLogits):
        return [f"{s.blocks[0].layernorm_before.normalized_shape[0]}/{3 * s.blocks[0].attention.q_proj.out_features}/"
                f"{s.blocks[0].mlp.fc1.out_features}/{s.blocks[0].attention.num_attention_heads}"
                for s in model.hf.swin.encoder.layers]
    out = []
    for stage in model.layers:
        b = stage.blocks[0]
        out.append(f"{b.norm1.normalized_shape[0]}/{b.attn.qkv.out_features}/"
                   f"{b.mlp.fc1.out_features}/{b.attn.num_heads}")
    return out


def numel(model):
    return sum(p.numel() for p in model.parameters())


def trial(base, x, config, ratio, rec):
    """Prune a deep copy of `base` at `ratio`, run it and count its MACs; fills `rec` as it goes."""
    rec.update(pruning_ratio=round(ratio, 4), stage="prune", pruned=False, forward=False)
    model = copy.deepcopy(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        pruner = make_pruner(model, x, config, ratio)
        pruner.step()
        if config == "tp-hf-swin-recipe":  # as prune_hf_swin.py does after step()
            for a in hf_attentions(model):
                a.head_dim = a.q_proj.out_features // a.num_attention_heads
        elif pruner.num_heads:  # as prune_timm_vit.py does after step()
            for a in attentions(model):
                a.num_heads = pruner.num_heads[a.qkv]
        rec["prune_s"] = round(time.perf_counter() - t, 2)
    short = lambda m: re.sub(r"\[[^\]]*\]", lambda l: f"[{l.group(0).count(',') + 1} names]", m)
    rec["tp_warnings"] = sorted({short(" ".join(str(w.message).split()))[:300] for w in caught})
    rec.update(pruned=True, params_after=numel(model), widths_after=widths(model), stage="forward")
    with torch.no_grad():
        model(x)
        rec["forward"] = True
        rec["macs_after"] = int(tp.utils.count_ops_and_params(model, x)[0])
    return model


def run_config(base, x, config, target, base_macs):
    rec, lo, hi = {"config": config}, 0.0, 0.95
    ratio, best, tries, t0 = 1 - math.sqrt(target), None, [], time.perf_counter()
    try:
        for i in range(10):
            attempt = {}
            try:
                model = trial(base, x, config, ratio, attempt)
            except Exception as e:
                if i == 0:  # the README's own starting point fails: nothing to search
                    rec.update(attempt)
                    raise
                tries.append({"pruning_ratio": round(ratio, 4), "failed": f"{type(e).__name__}"})
                hi, ratio = ratio, (lo + ratio) / 2
                continue
            achieved = attempt["macs_after"] / base_macs
            tries.append({"pruning_ratio": round(ratio, 4), "macs_ratio": round(achieved, 4),
                          "prune_s": attempt["prune_s"]})
            if best is None or abs(achieved - target) < abs(best[1]["macs_ratio"] - target):
                best = (model, dict(attempt, macs_ratio=round(achieved, 4)))
            if abs(achieved - target) <= 0.005:
                break
            lo, hi = (ratio, hi) if achieved > target else (lo, ratio)
            ratio = (lo + hi) / 2
        model, attempt = best
        rec.update(attempt, search=tries, search_s=round(time.perf_counter() - t0, 1))
        rec["stage"] = "onnx export"
        with torch.no_grad():
            ref = model(x).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pruned.onnx")
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"])
            rec["onnx_export"], rec["stage"] = True, "onnxruntime"
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 2
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            got = sess.run(None, {"input": x.numpy()})[0]
        rec["ort_max_abs_diff"] = float(np.abs(got - ref).max())
        rec["stage"] = None
    except Exception as e:
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        rec.update(failed_stage=rec.pop("stage", None), error=f"{type(e).__name__}: {msg}")
        rec.setdefault("search", tries)
    rec.pop("stage", None)
    return rec


def fmt(rec, base):
    g = lambda v, s=1e9: "n/a" if v is None else f"{v / s:.3f}"
    ratio = rec.get("macs_ratio")
    onnx = "yes" if rec.get("onnx_export") else ("no" if rec.get("failed_stage") in ("onnx export",) else "n/a")
    diff = rec.get("ort_max_abs_diff")
    fail = f"{rec['failed_stage']}: {rec['error']}" if rec.get("error") else "-"
    return (f"| {base['model']} | {rec['config']} | {'yes' if rec.get('pruned') else 'no'} | "
            f"{'yes' if rec.get('forward') else 'no'} | {rec.get('pruning_ratio', 'n/a')} | "
            f"{g(base['macs'])} -> {g(rec.get('macs_after'))} | {'n/a' if ratio is None else f'{ratio:.4f}'} | "
            f"{g(base['params'], 1e6)} -> {g(rec.get('params_after'), 1e6)} | {onnx} | "
            f"{'n/a' if diff is None else f'{diff:.2e}'} | {rec.get('prune_s', 'n/a')} | "
            f"{fail.replace('|', '/')} | {ACCURACY} |")


def hf_swin_tiny():
    import transformers

    config = transformers.SwinConfig(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2],
                                     num_heads=[3, 6, 12, 24], window_size=7, num_labels=1000)
    return HfLogits(transformers.SwinForImageClassification(config).eval()).eval()


def dimap_row(base, x, target) -> dict:
    """dimap-struct on the same model (default criterion), for the comparison."""
    import dimap_struct

    t = time.perf_counter()
    result = dimap_struct.compress(base.hf, target)
    rec = {"config": "dimap-struct (default)", "pruned": True, "pruning_ratio": "n/a",
           "prune_s": round(time.perf_counter() - t, 2)}
    model = result.model
    with torch.no_grad():
        ref = model(x).numpy()
        rec.update(forward=True, params_after=numel(model), widths_after=widths(HfLogits(model.hf)),
                   macs_after=int(tp.utils.count_ops_and_params(model, x)[0]))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pruned.onnx")
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"])
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        rec.update(onnx_export=True, ort_max_abs_diff=float(np.abs(got - ref).max()))
    return rec


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["swin_tiny_patch4_window7_224"])
    p.add_argument("--flops", type=float, default=0.5, help="fraction of the MACs to keep")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf", action="store_true", help="transformers' SwinForImageClassification (swin-tiny config) "
                   "with the tp-hf-swin-recipe configuration, beside dimap-struct on the same model")
    p.add_argument("--out", help="output stem (default benchmarks/results/peers, peers_hf with --hf)")
    args = p.parse_args()
    if args.hf:
        args.models, args.configs = ["hf:swin-tiny-config"], ["tp-hf-swin-recipe"]
    torch.set_num_threads(2)
    command = recorded_command("peers")

    runs = []
    for name in args.models:
        torch.manual_seed(args.seed)
        base = hf_swin_tiny() if args.hf else timm.create_model(name, pretrained=False).eval()
        x = torch.randn(1, 3, 224, 224)
        macs = int(tp.utils.count_ops_and_params(base, x)[0])
        info = {"model": name, "macs": macs, "params": numel(base), "widths": widths(base), "results": []}
        for config in args.configs:
            print(f"{name} / {config} ...", flush=True)
            info["results"].append(run_config(base, x, config, args.flops, macs))
        if args.hf:
            print(f"{name} / dimap-struct ...", flush=True)
            row = dimap_row(base, x, args.flops)
            row["macs_ratio"] = round(row["macs_after"] / macs, 4)
            info["results"].append(row)
        runs.append(info)

    report = {
        "command": command, "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 2",
        "versions": {k: md.version(k) for k in ("torch", "timm", "torch-pruning", "onnx", "onnxruntime")
                     + (("transformers",) if args.hf else ())},
        "target_macs_ratio": args.flops, "seed": args.seed, "accuracy": ACCURACY, "runs": runs,
    }
    head = ("| model | config | pruned | forward (1x3x224x224) | pruning_ratio | MACs G (before -> after) | "
            "achieved ratio | params M (before -> after) | ONNX export | ORT max abs diff | "
            "prune time (s) | failure | accuracy |\n" + "|---" * 13 + "|\n")
    rows = [fmt(r, info) for info in runs for r in info["results"]]
    shapes = ["", "First-block widths per stage, C/qkv_out/mlp_hidden/heads (final trial):", ""]
    for info in runs:
        shapes.append(f"- {info['model']} original: {', '.join(info['widths'])}")
        for r in info["results"]:
            if "widths_after" in r:
                shapes.append(f"- {info['model']} {r['config']}: {', '.join(r['widths_after'])}")
    v = report["versions"]
    text = (f"`{command}` ({report['date']}, {report['machine']}; torch {v['torch']}, timm {v['timm']}, "
            f"torch-pruning {v['torch-pruning']}; target: keep {args.flops} of the MACs; random weights, "
            f"seed {args.seed})\n\n" + head + "\n".join(rows) + "\n" + "\n".join(shapes) + "\n")
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / ("peers_hf" if args.hf else "peers")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
