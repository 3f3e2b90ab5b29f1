"""The `compare` figure: headline numbers per run with their mean and 95% CI, and layer profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

SHOWN = ["gen", "mem", "other", "flip_rate", "probe_best", "mem_to_gen", "gen_to_mem"]


def plot_comparison(comparison: dict[str, Any], path: Path) -> None:
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12.0, 3.8), dpi=120, gridspec_kw={"width_ratios": [3, 2]}
    )
    _headline_panel(left, comparison)
    _profile_panel(right, comparison)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _headline_panel(ax: Axes, comparison: dict[str, Any]) -> None:
    """Each headline number, one dot per run, with each task's mean and 95% CI."""
    tasks = list(comparison["summary"])
    spread = 0.5 / max(1, len(tasks))
    for offset, task in enumerate(tasks):
        rows = [row for row in comparison["runs"] if row["task"] == task]
        shift = (offset - (len(tasks) - 1) / 2) * spread
        for i, metric in enumerate(SHOWN):
            values = [100 * row[metric] for row in rows if row[metric] is not None]
            ax.scatter(
                [i + shift] * len(values),
                values,
                s=18,
                alpha=0.7,
                color=f"C{offset}",
                label=task if i == 0 else None,
            )
            entry = comparison["summary"][task].get(metric)
            if entry and entry["ci_low"] is not None:
                ax.errorbar(
                    i + shift + 0.08,
                    100 * entry["mean"],
                    yerr=[
                        [100 * (entry["mean"] - entry["ci_low"])],
                        [100 * (entry["ci_high"] - entry["mean"])],
                    ],
                    color="black",
                    capsize=3,
                    marker="_",
                    markersize=10,
                )
    ax.set_xticks(range(len(SHOWN)), [m.replace("_", " ") for m in SHOWN], fontsize=8)
    ax.set_ylabel("%  (black: mean, 95% CI)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("headline numbers, one dot per run", fontsize=10)


def _profile_panel(ax: Axes, comparison: dict[str, Any]) -> None:
    """Where each run's first top-N set sits, layer by layer."""
    fraction = None
    for name, profiles in comparison["layer_profiles"].items():
        if profiles:
            fraction = next(iter(profiles))  # each run's first top-N set
            shares = profiles[fraction]
            ax.plot(range(len(shares)), [100 * s for s in shares], marker="o", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("share of selected neurons (%)")
    top = f"top {float(fraction):.0%} " if fraction else ""
    ax.set_title(f"where the {top}neurons sit", fontsize=10)
    ax.grid(alpha=0.3)
    if fraction:
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:  # runs stopped before their report: results.json holds no neuron sets
        ax.text(
            0.5,
            0.5,
            "no neuron sets in these runs' results",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=8,
            color="grey",
        )


def _ink(share: float, cmap: str) -> str:
    """White on the dark end of a colour map, black elsewhere, so every label reads."""
    if np.isnan(share):
        return "black"
    red, green, blue, _ = plt.get_cmap(cmap)(float(np.clip(share, 0, 1)))
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"


def plot_cross_steering(rows: list[dict[str, Any]], path: Path) -> None:
    """One heat map per direction: steering chosen on a row's run, applied to a column's."""
    directions = list(dict.fromkeys(row["direction"] for row in rows))
    names = list(dict.fromkeys([*(r["from"] for r in rows), *(r["to"] for r in rows)]))
    fig, axes = plt.subplots(
        1, len(directions), figsize=(4.6 * len(directions), 4.0), dpi=120, squeeze=False
    )
    for ax, direction in zip(axes[0], directions, strict=True):
        toward = "gen" if direction == "mem_to_gen" else "mem"
        grid = np.full((len(names), len(names)), np.nan)
        for row in (r for r in rows if r["direction"] == direction):
            i, j = names.index(row["from"]), names.index(row["to"])
            grid[i, j] = 100 * row["targeted"][toward]
            control = 100 * row["control"]["target"]["mean"]
            ax.text(
                j,
                i,
                f"{grid[i, j]:.0f}%\n(random {control:.0f}%)",
                ha="center",
                va="center",
                fontsize=7,
                color=_ink(grid[i, j] / 100, "Blues"),
            )
        ax.imshow(grid, vmin=0, vmax=100, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("applied to (held-out prompts)")
        ax.set_ylabel("chosen on")
        ax.set_title(f"{direction.replace('_', ' ')}: share moved", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_neuron_agreement(comparison: dict[str, Any], path: Path) -> None:
    """Run x run heat maps where units correspond: overlap, NMD signs, probes across runs.

    Left: Jaccard of top-N sets each chosen from half of its run's pairs (diagonal: the
    run against itself on the other half), so every cell has the same amount of data.
    Middle: how often a neuron in both full top-N sets leans the same way (chance 0.5).
    Right: a probe fitted on the row's pairs, the share of the column's pairs it orders
    rightly (threshold-free, so a task's offset does not hide a shared direction), at
    the layer farthest from chance either way; the diagonal is the run's own
    cross-validated accuracy.
    """
    names = [row["run"] for row in comparison["runs"]]
    pairs = [p for p in comparison["neurons"] if p.get("neurons_correspond")]
    size = len(names)
    jaccard, signs, probes, shared = (np.full((size, size), np.nan) for _ in range(4))
    chance = np.nan
    for pair in pairs:
        i, j = (names.index(name) for name in pair["runs"])
        row = pair["overlap_halves"]["top_n"][0]
        chance, key = row["jaccard_chance"], f"{row['top_n']:g}"
        jaccard[i, j] = jaccard[j, i] = row["jaccard"]["mean"]
        for k, name in ((i, names[i]), (j, names[j])):
            jaccard[k, k] = pair["overlap_halves"]["within"][name][key]["mean"]
        signs[i, j] = signs[j, i] = pair["overlap"][key]["sign_agreement"]
        shared[i, j] = shared[j, i] = pair["overlap"][key]["n_shared"]
        for (row, col), key in (((i, j), "a_on_b"), ((j, i), "b_on_a")):
            shares = [layer[key]["pairs"]["share"] for layer in pair["cross_probe"]]
            # The layer farthest from chance either way: a reversed order (a shared axis
            # of opposite polarity) is as much a finding as a kept one.
            probes[row, col] = max(shares, key=lambda share: abs(share - 0.5))
    for k, run in enumerate(comparison["runs"]):
        probes[k, k] = run.get("probe_best", np.nan)
    panels = (
        (jaccard, f"top-N Jaccard, half the pairs each\n(chance {chance:.3f})", 0, 1, "Blues"),
        (signs, "NMD signs agree (shared neurons)\n(chance 0.5)", 0, 1, "Blues"),
        (
            probes,
            "probe fitted on row: column's pairs ordered\n(layer farthest from chance 0.5; "
            "diagonal: own accuracy)",
            0,
            1,
            "RdBu_r",  # pair order runs both ways from chance: a diverging map shows reversal
        ),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.4), dpi=120)
    for ax, (grid, title, low, high, cmap) in zip(axes, panels, strict=True):
        ax.imshow(grid, vmin=low, vmax=high, cmap=cmap)
        for (i, j), value in np.ndenumerate(grid):
            count = f"\n(n={shared[i, j]:.0f})" if grid is signs and i != j else ""
            if not np.isnan(value) or count:  # a sign share of no shared neuron is nan
                ink = _ink((value - low) / (high - low), cmap)
                ax.text(
                    j, i, f"{value:.2f}{count}", ha="center", va="center", fontsize=8, color=ink
                )
        ax.set_xticks(range(size), names, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(size), names, fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
