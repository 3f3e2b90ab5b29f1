"""The training-curve figure: gen / mem / other rate against step, the kept checkpoint marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"gen": "#1b9e77", "mem": "#d95f02", "other": "#7570b3"}


def plot_curve(
    history: Sequence[dict[str, float]], best_step: int | None, path: Path, title: str
) -> None:
    steps = [row["step"] for row in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for behaviour, color in COLORS.items():
        ax.plot(
            steps, [100 * row[behaviour] for row in history], label=behaviour, color=color, lw=2
        )
    if best_step is not None:
        ax.axvline(best_step, color="0.4", ls="--", lw=1, label=f"kept (step {best_step})")
    ax.set_xlabel("training step")
    ax.set_ylabel("share of dev prompts (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
