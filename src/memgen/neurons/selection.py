"""Global top-N% neuron selection across all layers, the paper's rule.

    from memgen.neurons.selection import select_top, layer_share
    layers, neurons = select_top(score, 0.05)      # score [L, D]; ranked by |score|
    share = layer_share(layers, n_layers=L)        # share of the selection in each layer

Ranking is global: a layer whose neurons separate the behaviours more simply gets
more of the selection. Ties are broken by position (earlier layer, lower index
first) so that the selection is deterministic.
"""

from __future__ import annotations

import numpy as np

from memgen.core.errors import MemgenError


def n_selected(fraction: float, total: int) -> int:
    """How many neurons the top `fraction` of `total` is (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise MemgenError(f"top_n fraction {fraction} must be in (0, 1], e.g. 0.05 for 5%")
    return max(1, min(total, round(fraction * total)))


def ranking(score: np.ndarray) -> np.ndarray:
    """Flat indices of all neurons, strongest |score| first (NaN ranks last)."""
    strength = np.nan_to_num(np.abs(np.asarray(score, dtype=np.float64)).ravel(), nan=-1.0)
    order: np.ndarray = np.argsort(-strength, kind="stable")
    return order


def select_top(score: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(layer, neuron) indices of the global top `fraction` of neurons by |score|.

    `score` is [L, D]; the result is two int64 arrays of length K, strongest first.
    """
    if score.ndim != 2:
        raise MemgenError(f"scores must be [layers, neurons], got shape {score.shape}")
    k = n_selected(fraction, score.size)
    flat = ranking(score)[:k]
    layers, neurons = np.unravel_index(flat, score.shape)
    return layers.astype(np.int64), neurons.astype(np.int64)


def flat_indices(layers: np.ndarray, neurons: np.ndarray, width: int) -> np.ndarray:
    """(layer, neuron) -> one int per neuron, for set operations."""
    result: np.ndarray = np.asarray(layers, dtype=np.int64) * width + np.asarray(neurons)
    return result


def layer_counts(layers: np.ndarray, n_layers: int) -> np.ndarray:
    """How many selected neurons fall in each layer."""
    counts: np.ndarray = np.bincount(np.asarray(layers, dtype=np.int64), minlength=n_layers)
    return counts


def layer_share(layers: np.ndarray, n_layers: int) -> np.ndarray:
    """Share of the selected neurons that falls in each layer (sums to 1)."""
    counts = layer_counts(layers, n_layers).astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts
