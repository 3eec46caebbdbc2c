"""Stage 8, report: the compression report (a plain dict, see `pipeline.build_report`) as tables."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _g(macs: int) -> str:
    return f"{macs / 1e9:.3f}G"


def _m(params: int) -> str:
    return f"{params / 1e6:.2f}M"


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.3f}" if before else "-"


def print_report(report: dict, console: Console, *, blocks: bool = False) -> None:
    """Summary, MACs / params per stage and per module, and (optionally) kept structure per block."""
    before, after = report["original"], report["pruned"]
    summary = Table(title=f"dimap-struct {report['package_version']}: {report['source_model']}",
                    show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("weights", report["weights"])
    summary.add_row("criterion", f"{report['criterion']} (score mode: {report['score_mode']})")
    summary.add_row("target", f"{_g(report['target']['macs'])} MACs ({report['target']['ratio']:.3f} of original)")
    achieved = report["achieved"]
    mark = "on target" if achieved["on_target"] else "[red]off target[/]"
    summary.add_row("achieved", f"{_g(achieved['macs'])} MACs ({achieved['ratio']:.3f}), {mark}")
    summary.add_row("params", f"{_m(before['params'])} -> {_m(after['params'])} ({achieved['params_ratio']:.3f})")
    summary.add_row("mask equivalence", f"max |diff| {report['verification']['mask_equivalence_max_abs_diff']:.2e}")
    if "onnx" in report:
        onnx = report["onnx"]
        summary.add_row("onnx", f"{onnx['path']} (opset {onnx['opset']}, dynamic batch, "
                                f"{onnx['bytes'] / 1e6:.1f} MB)")
        summary.add_row("onnx parity", f"max |diff| vs PyTorch {onnx['parity_max_abs_diff']:.2e}")
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
        console.print("kept heads / MLP width per block: "
                      + "  ".join(f"{b['heads']}/{b['mlp_width']}" for b in report["blocks"]), highlight=False)
    for note in report["notes"]:
        console.print(f"[dim]note:[/] {note}", highlight=False)
