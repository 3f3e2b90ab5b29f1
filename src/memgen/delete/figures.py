"""Deletion figure: what deleting each scorer's top-N% MLP neurons keeps, over set size.

Two panels, mean ablation: the memorized answers kept (left) and the rule answers kept
(right), one line per scorer, each beside the band its matched random sets span (the same
per-layer counts, the same deletion: least to most kept over the draws). A memory set
sits far below its band on the left and on its band's top on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from memgen.core.rows import DeletionRow

COLORS = ("#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
PANELS = {"mem_kept": "memorized answers kept (%)", "gen_kept": "rule answers kept (%)"}


def plot_deletion(rows: Sequence[DeletionRow], path: Path, ablation: str = "mean") -> None:
    shown = [r for r in rows if r.ablation == ablation]
    scorers = list(dict.fromkeys(r.scorer for r in shown))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120, sharex=True)
    for ax, (field, title) in zip(axes, PANELS.items(), strict=True):
        for scorer, color in zip(scorers, COLORS, strict=False):
            line = sorted((r for r in shown if r.scorer == scorer), key=lambda r: r.size)
            sizes = [100 * r.size for r in line]
            chance = [[100 * getattr(d, field) for d in r.random] for r in line]
            ax.fill_between(sizes, [min(c) for c in chance], [max(c) for c in chance],
                            color=color, alpha=0.15, linewidth=0)  # fmt: skip
            kept = [100 * getattr(r.deleted, field) for r in line]
            ax.plot(sizes, kept, "o-", color=color, label=f"{scorer} top-N")
        ax.set_xscale("log")
        ax.set_xlabel("MLP neurons deleted (% of all)")
        ax.set_ylabel(title)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{ablation} ablation; bands: matched random sets, min to max")
    axes[1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
