"""Per-block picture of what a pruning run kept, like the paper's layer-wise figure.

Two panels over the blocks (forward order, stage boundaries dashed): the kept fraction of
attention (heads, or non-zero qkv/proj weights in weight granularity) and of the MLP (width,
or non-zero fc1/fc2 weights). One line per report, labelled by its criterion.
"""
from __future__ import annotations

from pathlib import Path


def kept_fractions(report: dict) -> tuple[list[float], list[float]]:
    """(attention, mlp) kept fraction per block of a structured or weight-granularity report."""
    if report.get("granularity") == "weight":
        layers = [b["kept_per_layer"] for b in report["blocks"]]
        return ([(k["qkv"] + k["proj"]) / 2 for k in layers], [(k["fc1"] + k["fc2"]) / 2 for k in layers])
    blocks = report["blocks"]
    return ([b["heads"] / b["heads_before"] for b in blocks], [b["mlp_width"] / b["mlp_width_before"] for b in blocks])


def label_of(report: dict) -> str:
    if report.get("granularity") == "weight":
        return "dimap (weight)"
    return report["criterion"]


def plot_blocks(reports: list[dict], path: str | Path, title: str | None = None) -> None:
    """Draw kept attention / MLP fractions per block for each report into the PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    stages = [b["stage"] for b in reports[0]["blocks"]]
    for report in reports:
        attn, mlp = kept_fractions(report)
        for ax, values in zip(axes, (attn, mlp)):
            ax.plot(range(len(values)), values, marker="o", ms=3, label=label_of(report))
    for ax, what in zip(axes, ("attention kept (heads)", "MLP kept (width)")):
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i - 0.5, color="grey", ls="--", lw=0.8)
        ax.set_ylabel(what)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("block (dashed: stage boundary)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    first = reports[0]
    ratio = first["achieved"]["ratio"]
    fig.suptitle(title or f"{first['source_model']}: kept structure per block at {ratio:.2f} of the MACs")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
