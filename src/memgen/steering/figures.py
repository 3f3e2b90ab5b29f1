"""Steering figure: held-out gen / mem / other shares per method, beside the matched control."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from memgen.core.rows import SteeringRow

COLORS = {"gen": "#1b9e77", "mem": "#d95f02", "other": "#b3b3b3"}
TITLES = {
    "mem_to_gen": "memorized prompts, steered toward gen",
    "gen_to_mem": "generalized prompts, steered toward mem",
}


def plot_steering(rows: Sequence[SteeringRow], path: Path) -> None:
    directions = [d for d in TITLES if any(r.direction == d for r in rows)]
    fig, axes = plt.subplots(
        1,
        max(1, len(directions)),
        figsize=(6.5 * max(1, len(directions)), 3.8),
        dpi=120,
        squeeze=False,
    )
    for ax, direction in zip(axes[0], directions, strict=False):
        labels, stacks = [], []
        for row in (r for r in rows if r.direction == direction):
            labels += [f"{row.method}\n{row.selection}\n{row.size:g}", "matched"]
            stacks += [row.targeted, row.controls.matched.rates]
        positions = [i + (i // 2) * 0.4 for i in range(len(stacks))]
        bottom = [0.0] * len(stacks)
        for behaviour, color in COLORS.items():
            heights = [100 * s[behaviour] for s in stacks]
            ax.bar(positions, heights, bottom=bottom, color=color, width=0.9, label=behaviour)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_xticks(positions, labels, fontsize=7)
        ax.set_ylabel("share of prompts (%)")
        ax.set_ylim(0, 100)
        ax.set_title(TITLES[direction], fontsize=10)
    axes[0][0].legend(frameon=False, ncol=3, loc="lower left", bbox_to_anchor=(0, 1.08))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
