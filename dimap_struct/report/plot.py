"""Per-block picture of what a pruning run kept, like the paper's layer-wise figure.

Two panels over the blocks (forward order, stage boundaries dashed): the kept fraction of
attention (heads, or non-zero qkv/proj weights in weight granularity) and of the MLP (width,
or non-zero fc1/fc2 weights). One line per report, labelled by its criterion (and its policy
when `--policy` replaced the criterion's own).
"""
from __future__ import annotations

from pathlib import Path


def label_of(report) -> str:
    if report.granularity == "weight":
        return "dimap (weight)"
    return report.criterion if report.recipe.get("policy") is None else f"{report.criterion} / {report.policy}"


def plot_blocks(reports: list, path: str | Path, title: str | None = None) -> None:
    """Draw kept attention / MLP fractions per block for each `report.schema.Report` into the
    PNG at `path`."""
    # deferred: start-up (matplotlib takes about 1 s), loaded only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    stages = [b.stage for b in reports[0].blocks]
    for report in reports:
        attn, mlp = [b.attention_kept for b in report.blocks], [b.mlp_kept for b in report.blocks]
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
    fig.suptitle(title or f"{first.source.model}: kept structure per block at {first.achieved.ratio:.2f} of the MACs")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
