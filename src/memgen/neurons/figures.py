"""Figures of the neurons stage: NMD heat map, where the selected neurons sit, |r| per layer.

    from memgen.neurons.figures import plot_nmd_heatmap, plot_layer_share, plot_score_by_layer
    plot_nmd_heatmap(nmd, Path("nmd.png"), "color: NMD at resid")

All are written as PNG with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import TwoSlopeNorm


def plot_nmd_heatmap(nmd: np.ndarray, path: Path, title: str) -> None:
    """The paper's view: each layer's NMD sorted from most mem- to most gen-leaning."""
    n_layers, width = nmd.shape
    ordered = -np.sort(-nmd, axis=1)
    # Clip the colour scale at the 99.5th percentile so one outlier does not wash out the rest.
    limit = float(np.percentile(np.abs(nmd), 99.5)) or 1.0
    fig, ax = plt.subplots(figsize=(7.0, 0.35 * n_layers + 1.8), dpi=120)
    image = ax.imshow(
        ordered,
        aspect="auto",
        origin="lower",
        cmap="RdBu_r",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit),
        interpolation="nearest",
        extent=(0, width, -0.5, n_layers - 0.5),
    )
    ax.set_xlabel("neuron rank within layer (sorted by NMD)")
    ax.set_ylabel("layer")
    ax.set_yticks(range(n_layers))
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax, pad=0.02)
    bar.set_label("NMD = mean(mem) - mean(gen)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_layer_share(shares: Mapping[str, np.ndarray], path: Path, title: str) -> None:
    """Grouped bars: for each top-N label, the share of its selected neurons in each layer."""
    n_layers = len(next(iter(shares.values())))
    width = 0.8 / max(len(shares), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * n_layers + 2), 3.6), dpi=120)
    layers = np.arange(n_layers)
    for i, (label, share) in enumerate(shares.items()):
        offset = (i - (len(shares) - 1) / 2) * width
        ax.bar(layers + offset, 100 * np.asarray(share), width=width, label=label)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of selected neurons (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_score_by_layer(score: np.ndarray, path: Path, title: str, label: str) -> None:
    """Box plot of |score| per layer (whiskers at the 5th and 95th percentile)."""
    n_layers = score.shape[0]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * n_layers + 2), 3.6), dpi=120)
    ax.boxplot(
        [np.abs(row) for row in score],
        positions=range(n_layers),
        whis=(5, 95),
        showfliers=False,
        widths=0.6,
    )
    ax.set_xlabel("layer")
    ax.set_ylabel(f"|{label}|")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
