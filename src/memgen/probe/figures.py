"""Figures of the probe stage: accuracy against layer, and the learning curve.

    from memgen.probe.figures import plot_layer_accuracy, plot_learning_curve
    plot_layer_accuracy(per_layer_rows, Path("accuracy.png"), "color: logreg")

Written as PNG with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _finish(ax: Any, fig: Any, path: Path, title: str) -> None:
    ax.axhline(50, color="0.4", ls="--", lw=1, label="chance (50%)")
    ax.set_ylim(30, 102)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # Outside the axes: the curves can sit anywhere between chance and 100%.
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_layer_accuracy(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    title: str,
    readout: Sequence[Mapping[str, Any]] = (),
) -> None:
    """One line per site kind with its 95% Wilson band; the answer readout dashed."""
    fig, ax = plt.subplots(figsize=(8.0, 3.6), dpi=120)
    if readout:
        ax.plot(
            [int(r["layer"]) for r in readout],
            [100 * r["paired_accuracy"] for r in readout],
            color="0.25",
            ls=":",
            marker="s",
            lw=1.5,
            label="answer readout\n(within pairs)",
        )
    for site in dict.fromkeys(str(row["site"]) for row in rows):
        mine = sorted((r for r in rows if r["site"] == site), key=lambda r: int(r["layer"]))
        layers = [int(r["layer"]) for r in mine]
        ax.plot(layers, [100 * r["accuracy"] for r in mine], marker="o", lw=2, label=site)
        ax.fill_between(
            layers, [100 * r["ci_low"] for r in mine], [100 * r["ci_high"] for r in mine], alpha=0.2
        )
    ax.set_xlabel("layer")
    ax.set_xticks(sorted({int(r["layer"]) for r in rows}))
    _finish(ax, fig, path, title)


def plot_learning_curve(points: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Accuracy against the number of training pairs, with the spread over repeats."""
    fig, ax = plt.subplots(figsize=(8.0, 3.6), dpi=120)
    sizes = [int(p["n_pairs"]) for p in points]
    ax.plot(sizes, [100 * p["accuracy"] for p in points], marker="o", lw=2, label="mean")
    ax.fill_between(
        sizes,
        [100 * p["ci_low"] for p in points],
        [100 * p["ci_high"] for p in points],
        alpha=0.2,
        label="95% of repeats",
    )
    if len(sizes) > 1 and min(sizes) > 0:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("training pairs")
    _finish(ax, fig, path, title)
