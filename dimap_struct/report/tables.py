"""The compression report (`report.schema.Report`) as rich tables."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .schema import Report


def _g(macs: int) -> str:
    return f"{macs / 1e9:.3f}G"


def _m(params: int) -> str:
    return f"{params / 1e6:.2f}M"


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.3f}" if before else "-"


def print_report(report: Report, console: Console, *, blocks: bool = False) -> None:
    """Summary, MACs / params per stage and per module, and (optionally) kept structure per block."""
    weight = report.granularity == "weight"
    title = f"dimap-struct {report.package_version}: {report.source.model}" + (" (weight granularity)" if weight else "")
    summary = Table(title=title, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("weights", report.source.weights)
    if weight:
        _weight_rows(summary, report)
    else:
        _structured_rows(summary, report)
    if report.onnx is not None:
        onnx = report.onnx
        summary.add_row("onnx", f"{onnx.path} (opset {onnx.opset}, dynamic batch, {onnx.bytes / 1e6:.1f} MB)")
        summary.add_row("onnx parity", f"max |diff| vs PyTorch {onnx.parity_max_abs_diff:.2e}")
    if report.plot is not None:
        summary.add_row("plot", report.plot)
    if report.accuracy_estimate is not None:
        summary.add_row("accuracy estimate", _estimate(report.accuracy_estimate))
    console.print(summary)
    if weight:
        _weight_tables(report, console, blocks)
    else:
        _structured_tables(report, console, blocks)
    for note in report.notes:
        console.print(f"[dim]note:[/] {note}", highlight=False)


def _estimate(estimate: dict) -> str:
    text = (f"{estimate['agreement_top1']:.1f}% top-1 agreement with the dense model, relative logit error "
            f"{estimate['relative_logit_error']:.3f} ({estimate['images']} held-out images")
    if "pruned_top1" in estimate:
        text += f"; top-1 {estimate['dense_top1']:.1f}% -> {estimate['pruned_top1']:.1f}%"
    return text + ")"


def _latency_text(latency: dict) -> str:
    """--latency's row: the target, the table's prediction and, when the plan was timed, the measured fraction."""
    text = (f"target {latency['target']:g} of the dense model (batch {latency['batch']}, {latency['threads']} "
            f"threads); predicted {latency['predicted_ratio']:.3f}")
    if "measured_ratio" in latency:
        checks = len(latency["checks"])
        text += f", measured {latency['measured_ratio']:.3f} ({checks} timing{'s' if checks > 1 else ''} in turns)"
    return text


def _structured_rows(summary: Table, report: Report) -> None:
    mode = f", score mode {report.score_mode}" if report.score_mode else ""
    parts = f"score {report.score}, policy {report.policy}" if report.score else f"selection: {report.selection['policy']}"
    summary.add_row("criterion", f"{report.criterion}: {report.criterion_summary} ({parts}{mode})")
    summary.add_row("target", f"{_g(report.target.macs)} MACs ({report.target.ratio:.3f} of original)")
    achieved = report.achieved
    mark = "on target" if achieved.on_target else "[red]off target[/]"
    summary.add_row("achieved", f"{_g(achieved.macs)} MACs ({achieved.ratio:.3f}), {mark}")
    summary.add_row("params", f"{_m(report.original.params)} -> {_m(achieved.params)} ({achieved.params_ratio:.3f})")
    if report.latency is not None:
        summary.add_row("latency", _latency_text(report.latency))
    summary.add_row("mask equivalence", f"max |diff| {report.verification['mask_equivalence_max_abs_diff']:.2e}")


def _structured_tables(report: Report, console: Console, blocks: bool) -> None:
    before, after = report.original, report.pruned
    for what, key in (("stage", "by_stage"), ("module", "by_module")):
        table = Table(title=f"MACs and params per {what}", title_justify="left")
        for col in (what, "MACs before", "MACs after", "ratio", "params before", "params after", "ratio"):
            table.add_column(col, justify="left" if col == what else "right")
        for name, mb in getattr(before, f"macs_{key}").items():
            ma = getattr(after, f"macs_{key}").get(name, 0)
            pb, pa = getattr(before, f"params_{key}").get(name, 0), getattr(after, f"params_{key}").get(name, 0)
            table.add_row(name, _g(mb), _g(ma), _ratio(ma, mb), _m(pb), _m(pa), _ratio(pa, pb))
        table.add_row("total", _g(before.macs), _g(after.macs), _ratio(after.macs, before.macs),
                      _m(before.params), _m(after.params), _ratio(after.params, before.params), style="bold")
        console.print(table)
    if blocks:
        table = Table(title="kept structure per block", title_justify="left")
        for col in ("block", "heads", "MLP width"):
            table.add_column(col, justify="left" if col == "block" else "right")
        for b in report.blocks:
            table.add_row(b.name, f"{b.heads}/{b.heads_before}", f"{b.mlp_width}/{b.mlp_width_before}")
        console.print(table)
        return
    if report.residual:
        console.print("residual width per stage: " + "  ".join(
            f"{r.width_before}->{r.width}" for r in report.residual), highlight=False)
    console.print("kept heads / MLP width per block: " + "  ".join(f"{b.heads}/{b.mlp_width}" for b in report.blocks),
                  highlight=False)


def _weight_rows(summary: Table, report: Report) -> None:
    """The paper's Table-1 view: non-zero parameters and effective MACs."""
    achieved, target = report.achieved, report.target
    summary.add_row("criterion", report.criterion_summary)
    summary.add_row("target", f"keep {float(target.params):.3f} of the prunable weights" if target.params is not None
                    else f"{_g(target.macs)} effective MACs ({target.ratio:.3f})")
    summary.add_row("non-zero params", f"{_m(report.original.params)} -> {_m(achieved.params)} "
                                       f"({achieved.params_ratio:.3f}; prunable kept "
                                       f"{achieved.kept_prunable_fraction:.3f})")
    summary.add_row("effective MACs", f"{_g(report.original.macs)} -> {_g(achieved.macs)} ({achieved.ratio:.3f})")
    summary.add_row("speed", "[yellow]not faster[/]: the model is dense with zeros")


def _weight_tables(report: Report, console: Console, blocks: bool) -> None:
    table = Table(title="per module (one threshold each)", title_justify="left")
    for col in ("module", "weights", "removed", "kept fraction", "threshold"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for name, m in report.selection["modules"].items():
        t = "-" if m["threshold"] is None else f"{m['threshold']:.3g}"
        table.add_row(name, _m(m["weights"]), _m(m["removed"]), f"{m['kept_fraction']:.3f}", t)
    console.print(table)
    if blocks:
        table = Table(title="kept weight fraction per block", title_justify="left")
        for col in ("block", "qkv", "proj", "fc1", "fc2"):
            table.add_column(col, justify="left" if col == "block" else "right")
        for b in report.blocks:
            table.add_row(b.name, *(f"{b.kept_per_layer[k]:.3f}" for k in ("qkv", "proj", "fc1", "fc2")))
        console.print(table)
