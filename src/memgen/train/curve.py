"""The training-curve figure: gen / mem / other rate against step, the kept checkpoint marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"gen": "#1b9e77", "mem": "#d95f02", "other": "#7570b3"}


def plot_curve(
    history: Sequence[dict[str, Any]], best_step: int | None, path: Path, title: str
) -> None:
    """One panel, or one per component task of a mixture (rows with `by_task`)."""
    tasks = list(history[-1].get("by_task") or {}) if history else []
    panels = [(title, history)] + [
        (f"{title} - {name}", [{"step": row["step"], **row["by_task"][name]} for row in history])
        for name in tasks
    ]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(6.4, 3.6 * len(panels)), dpi=120, squeeze=False
    )
    for ax, (panel_title, rows) in zip(axes[:, 0], panels, strict=True):
        steps = [row["step"] for row in rows]
        for behaviour, color in COLORS.items():
            ax.plot(
                steps,
                [100 * row[behaviour] for row in rows],
                label=behaviour,
                color=color,
                lw=2,
                marker="o" if len(rows) == 1 else None,
            )
        if best_step is not None:
            ax.axvline(best_step, color="0.4", ls="--", lw=1, label=f"kept (step {best_step})")
        ax.set_xlabel("training step")
        ax.set_ylabel("share of dev prompts (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
    axes[-1, 0].legend(frameon=False, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
