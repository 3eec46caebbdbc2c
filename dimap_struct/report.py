"""Stage 8, report: the compression report (a plain dict, see `pipeline.build_report`) as tables."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


RANDOM_WEIGHTS_NOTE = "Weights are a random initialisation, not pretrained: the pruned model's accuracy means nothing."


def source_section(loaded) -> dict:
    """Report keys every granularity shares: package version, source model, family, weights
    and the input preprocessing (`loaded` is a `models.LoadedModel`)."""
    from . import __version__

    dc = loaded.data_config
    return {"package_version": __version__, "source_model": loaded.name, "family": loaded.adapter.family,
            "weights": loaded.weights,
            "input": {"input_size": list(dc["input_size"]), "mean": list(dc["mean"]), "std": list(dc["std"]),
                      "interpolation": dc.get("interpolation"), "crop_pct": dc.get("crop_pct")}}


def _g(macs: int) -> str:
    return f"{macs / 1e9:.3f}G"


def _m(params: int) -> str:
    return f"{params / 1e6:.2f}M"


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.3f}" if before else "-"


def print_report(report: dict, console: Console, *, blocks: bool = False) -> None:
    """Summary, MACs / params per stage and per module, and (optionally) kept structure per block."""
    if report.get("granularity") == "weight":
        return print_weight_report(report, console, blocks=blocks)
    before, after = report["original"], report["pruned"]
    summary = Table(title=f"dimap-struct {report['package_version']}: {report['source_model']}",
                    show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("weights", report["weights"])
    mode = f", score mode {report['score_mode']}" if report["criterion"] in ("dimap", "lamp-global", "dimap-cost") else ""
    summary.add_row("criterion", f"{report['criterion']}: {report['criterion_summary']} "
                                 f"(selection: {report['selection']['policy']}{mode})")
    summary.add_row("target", f"{_g(report['target']['macs'])} MACs ({report['target']['ratio']:.3f} of original)")
    achieved = report["achieved"]
    mark = "on target" if achieved["on_target"] else "[red]off target[/]"
    summary.add_row("achieved", f"{_g(achieved['macs'])} MACs ({achieved['ratio']:.3f}), {mark}")
    summary.add_row("params", f"{_m(before['params'])} -> {_m(after['params'])} ({achieved['params_ratio']:.3f})")
    summary.add_row("mask equivalence", f"max |diff| {report['verification']['mask_equivalence_max_abs_diff']:.2e}")
    _onnx_rows(summary, report)
    console.print(summary)

    for what, key in (("stage", "by_stage"), ("module", "by_module")):
        table = Table(title=f"MACs and params per {what}", title_justify="left")
        for col in (what, "MACs before", "MACs after", "ratio", "params before", "params after", "ratio"):
            table.add_column(col, justify="left" if col == what else "right")
        for name in before[f"macs_{key}"]:
            mb, ma = before[f"macs_{key}"][name], after[f"macs_{key}"].get(name, 0)
            pb, pa = before[f"params_{key}"].get(name, 0), after[f"params_{key}"].get(name, 0)
            table.add_row(name, _g(mb), _g(ma), _ratio(ma, mb), _m(pb), _m(pa), _ratio(pa, pb))
        table.add_row("total", _g(before["macs"]), _g(after["macs"]), _ratio(after["macs"], before["macs"]),
                      _m(before["params"]), _m(after["params"]), _ratio(after["params"], before["params"]),
                      style="bold")
        console.print(table)

    if blocks:
        table = Table(title="kept structure per block", title_justify="left")
        for col in ("block", "heads", "MLP width"):
            table.add_column(col, justify="left" if col == "block" else "right")
        for b in report["blocks"]:
            table.add_row(b["name"], f"{b['heads']}/{b['heads_before']}", f"{b['mlp_width']}/{b['mlp_width_before']}")
        console.print(table)
    else:
        if report.get("residual"):
            console.print("residual width per stage: " + "  ".join(
                f"{r['width_before']}->{r['width']}" for r in report["residual"]), highlight=False)
        console.print("kept heads / MLP width per block: "
                      + "  ".join(f"{b['heads']}/{b['mlp_width']}" for b in report["blocks"]), highlight=False)
    for note in report["notes"]:
        console.print(f"[dim]note:[/] {note}", highlight=False)


def _onnx_rows(summary: Table, report: dict) -> None:
    if "onnx" in report:
        onnx = report["onnx"]
        summary.add_row("onnx", f"{onnx['path']} (opset {onnx['opset']}, dynamic batch, "
                                f"{onnx['bytes'] / 1e6:.1f} MB)")
        summary.add_row("onnx parity", f"max |diff| vs PyTorch {onnx['parity_max_abs_diff']:.2e}")
    if "plot" in report:
        summary.add_row("plot", report["plot"])


def print_weight_report(report: dict, console: Console, *, blocks: bool = False) -> None:
    """The paper's Table-1 view: non-zero parameters and effective MACs, per-module thresholds."""
    before, achieved = report["original"], report["achieved"]
    summary = Table(title=f"dimap-struct {report['package_version']}: {report['source_model']} "
                          "(weight granularity)", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("weights", report["weights"])
    summary.add_row("criterion", report["criterion_summary"])
    target = report["target"]
    summary.add_row("target", f"keep {target['kept_prunable_fraction']:.3f} of the prunable weights"
                    if "params" in target else f"{_g(target['macs'])} effective MACs ({target['ratio']:.3f})")
    summary.add_row("non-zero params", f"{_m(before['params'])} -> {_m(achieved['nonzero_params'])} "
                                       f"({achieved['params_ratio']:.3f}; prunable kept "
                                       f"{achieved['kept_prunable_fraction']:.3f})")
    summary.add_row("effective MACs", f"{_g(before['macs'])} -> {_g(achieved['effective_macs'])} "
                                      f"({achieved['ratio']:.3f})")
    summary.add_row("speed", "[yellow]not faster[/]: the model is dense with zeros")
    _onnx_rows(summary, report)
    console.print(summary)
    table = Table(title="per module (one threshold each)", title_justify="left")
    for col in ("module", "weights", "removed", "kept fraction", "threshold"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for name, m in report["modules"].items():
        t = "-" if m["threshold"] is None else f"{m['threshold']:.3g}"
        table.add_row(name, _m(m["weights"]), _m(m["removed"]), f"{m['kept_fraction']:.3f}", t)
    console.print(table)
    if blocks:
        table = Table(title="kept weight fraction per block", title_justify="left")
        for col in ("block", "qkv", "proj", "fc1", "fc2"):
            table.add_column(col, justify="left" if col == "block" else "right")
        for b in report["blocks"]:
            table.add_row(b["name"], *(f"{b['kept_per_layer'][k]:.3f}" for k in ("qkv", "proj", "fc1", "fc2")))
        console.print(table)
    for note in report["notes"]:
        console.print(f"[dim]note:[/] {note}", highlight=False)
