"""Do the behaviour neurons agree across data subsets, seeds and tasks? Overlap vs chance.

    from memgen.neurons.consistency import split_half_consistency, compare_scores, compare_sets
    report = split_half_consistency(X, y, pair_ids, scorer="pearson", fractions=[0.05], n_splits=10)
    compare_scores(score_a, score_b, 0.05)  # two score arrays of the same model/site
    compare_sets(set_a, set_b)              # two saved NeuronSets of the same model/site
    across_halves(run_a, run_b, "pearson", [0.05])  # two runs of one model, half vs half

Intra-task (`split_half_consistency`): the flipped pairs are split, by pair id, into two disjoint
halves several times (seeded); each half selects its own top-N% and the two
selections are compared with Jaccard and Dice overlap, and the full score maps with
the Spearman correlation of |score|. Two baselines say what "no agreement" looks
like: the exact expected overlap of two random sets of the same sizes, and an
empirical one from the same splits with the labels shuffled within each pair (this
keeps every half balanced and the pair contents matched, so only the behaviour
signal is removed). Intervals are the 2.5-97.5 percentiles over splits: the halves
of different splits share data, so this is a spread, not a confidence interval of
the mean.

Across runs of one model (tasks of one network, adapters on one base: `across_halves`),
each split takes half of each run's pairs, so the overlap between runs is measured at
the same amount of data as the split-half overlap within a run, and the two compare.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import hypergeom, rankdata

from memgen.core.errors import MemgenError
from memgen.core.neuron_set import NeuronSet
from memgen.neurons.scores import score as run_scorer
from memgen.neurons.selection import flat_indices, n_selected, ranking


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B| of two index sets (1.0 for two empty sets)."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2 |A & B| / (|A| + |B|) of two index sets (1.0 for two empty sets)."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    size = len(sa) + len(sb)
    return 2 * len(sa & sb) / size if size else 1.0


def chance_overlap(k_a: int, k_b: int, total: int) -> dict[str, float]:
    """Expected Jaccard and Dice of two uniformly random subsets of sizes k_a, k_b of `total`."""
    if not 0 < k_a <= total or not 0 < k_b <= total:
        raise MemgenError(f"set sizes {k_a}, {k_b} must be in 1..{total}")
    return {
        "jaccard": _expected_jaccard(k_a, k_b, total),
        "dice": 2 * k_a * k_b / total / (k_a + k_b),
    }


@functools.lru_cache(maxsize=64)
def _expected_jaccard(k_a: int, k_b: int, total: int) -> float:
    # The intersection size is hypergeometric; Jaccard is a non-linear function of it.
    # Cached: every split of a run asks for the same sizes, and the pmf is not cheap.
    shared = np.arange(max(0, k_a + k_b - total), min(k_a, k_b) + 1)
    pmf = hypergeom.pmf(shared, total, k_a, k_b)
    return float(np.sum(pmf * shared / (k_a + k_b - shared)))


def layer_chance_jaccard(top_a: np.ndarray, top_b: np.ndarray, shape: tuple[int, int]) -> float:
    """Expected Jaccard of two random sets with `top_a`'s and `top_b`'s per-layer counts.

    `top_a` and `top_b` are flat indices into a (layers, width) map. Where both sets sit in
    the same few layers, two random sets of those layers overlap far more than two random
    sets of the whole model: this is the chance level for "the same neurons", not just
    "the same layers". The intersection is a sum of one hypergeometric per layer; its
    exact distribution is their convolution.
    """
    n_layers, width = shape
    counts_a = np.bincount(np.asarray(top_a) // width, minlength=n_layers)
    counts_b = np.bincount(np.asarray(top_b) // width, minlength=n_layers)
    pmf = np.ones(1)
    for k_a, k_b in zip(counts_a.tolist(), counts_b.tolist(), strict=True):
        if k_a and k_b:
            pmf = np.convolve(pmf, hypergeom.pmf(np.arange(min(k_a, k_b) + 1), width, k_a, k_b))
    shared = np.arange(len(pmf))
    return float(np.sum(pmf * shared / (len(top_a) + len(top_b) - shared)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of |a| and |b| over all neurons (0 when either is constant)."""
    ra = rankdata(np.abs(np.asarray(a, dtype=np.float64)).ravel())
    rb = rankdata(np.abs(np.asarray(b, dtype=np.float64)).ravel())
    ra -= ra.mean()
    rb -= rb.mean()
    scale = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb / scale) if scale > 0 else 0.0


def compare_scores(
    a: np.ndarray,
    b: np.ndarray,
    fraction: float,
    nmd: tuple[np.ndarray, np.ndarray] | None = None,
    per_layer_chance: bool = False,
) -> dict[str, float]:
    """Overlap of the top-`fraction` selections of two score maps, and their rank correlation.

    With both runs' NMD maps (`nmd`), also how often a neuron selected in both leans the
    same way (`sign_agreement`, chance 0.5; NaN when no neuron is shared): is a
    "memorization" neuron of one run a memorization neuron of the other? With
    `per_layer_chance` (2-D maps), also `chance_jaccard_layers`: the chance overlap given
    how many neurons each selection takes from each layer (`layer_chance_jaccard`).
    """
    if a.shape != b.shape:
        raise MemgenError(
            f"score maps differ in shape {a.shape} vs {b.shape}; compare the same model and site"
        )
    k = n_selected(fraction, a.size)
    top_a, top_b = ranking(a)[:k], ranking(b)[:k]
    chance = chance_overlap(k, k, a.size)
    found: dict[str, float] = {
        "k": k,
        "total": int(a.size),
        "jaccard": jaccard(top_a, top_b),
        "dice": dice(top_a, top_b),
        "spearman": spearman(a, b),
        "chance_jaccard": chance["jaccard"],
        "chance_dice": chance["dice"],
    }
    if per_layer_chance:
        found["chance_jaccard_layers"] = layer_chance_jaccard(top_a, top_b, a.shape)
    if nmd is not None:
        shared = np.intersect1d(top_a, top_b)
        signs = [np.sign(np.asarray(m, dtype=np.float64).ravel()[shared]) for m in nmd]
        found["n_shared"] = len(shared)
        found["sign_agreement"] = float(np.mean(signs[0] == signs[1])) if len(shared) else np.nan
    return found


def compare_sets(a: NeuronSet, b: NeuronSet) -> dict[str, float]:
    """Overlap of two neuron sets of the same architecture and site.

    Full score maps are not stored in a set, so instead of Spearman this reports how
    often the shared neurons lean the same way (the sign of their NMD agrees).
    """
    shape_a = (a.model.get("model_type"), a.model.get("hidden_size"), a.site, a.n_layers, a.width)
    shape_b = (b.model.get("model_type"), b.model.get("hidden_size"), b.site, b.n_layers, b.width)
    if shape_a != shape_b:
        raise MemgenError(
            f"neuron sets differ in model or site ({shape_a} vs {shape_b}); "
            "compare sets recorded on the same model and site"
        )
    flat_a = flat_indices(a.layers, a.neurons, a.width)
    flat_b = flat_indices(b.layers, b.neurons, b.width)
    shared, ia, ib = np.intersect1d(flat_a, flat_b, return_indices=True)
    agree = np.sign(a.nmd[ia]) == np.sign(b.nmd[ib])
    chance = chance_overlap(len(a), len(b), a.n_layers * a.width)
    return {
        "k_a": len(a),
        "k_b": len(b),
        "n_shared": len(shared),
        "jaccard": jaccard(flat_a, flat_b),
        "dice": dice(flat_a, flat_b),
        "sign_agreement": float(agree.mean()) if len(shared) else float("nan"),
        "chance_jaccard": chance["jaccard"],
        "chance_dice": chance["dice"],
    }


def shuffle_within_pairs(
    y: np.ndarray, pair_ids: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Permute the labels inside each pair (group) independently."""
    n = len(y)
    # Both orders group rows by pair id; within a pair one is by row, one random.
    by_row = np.lexsort((np.arange(n), pair_ids))
    by_chance = np.lexsort((rng.random(n), pair_ids))
    shuffled = np.empty_like(y)
    shuffled[by_row] = y[by_chance]
    return shuffled


def split_pairs(pair_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two disjoint halves of the pairs (a pair never straddles halves)."""
    unique = rng.permutation(np.unique(pair_ids))
    half = np.isin(pair_ids, unique[: len(unique) // 2])
    return np.flatnonzero(half), np.flatnonzero(~half)


def percentile_range(values: Sequence[float]) -> dict[str, float]:
    """Mean and 2.5-97.5 percentile range of per-split values."""
    array = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(array, [2.5, 97.5])
    return {"mean": float(array.mean()), "ci_low": float(low), "ci_high": float(high)}


def _half_scores(
    x: np.ndarray, y: np.ndarray, rows: tuple[np.ndarray, np.ndarray], scorer: str
) -> tuple[np.ndarray, np.ndarray]:
    return tuple(run_scorer(scorer, x[idx], y[idx]) for idx in rows)  # type: ignore[return-value]


def split_half_consistency(
    x: np.ndarray,
    y: np.ndarray,
    pair_ids: np.ndarray,
    scorer: str,
    fractions: Sequence[float],
    n_splits: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Split-half consistency of the top-N selections, with chance and permutation baselines."""
    pair_ids = np.asarray(pair_ids)
    y = np.asarray(y)
    n_pairs = len(np.unique(pair_ids))
    if len(pair_ids) != len(y) or len(y) != x.shape[0]:
        raise MemgenError(
            "labels, pair ids and activations differ in length; re-run `memgen record`"
        )
    if n_pairs < 4:
        raise MemgenError(
            f"split-half consistency needs at least 4 pairs, found {n_pairs}; "
            "mine more flipped pairs (raise behave.target_flips)"
        )
    rng = np.random.default_rng(seed)
    per_split: dict[str, list[dict[str, float]]] = {"observed": [], "permuted": []}
    for _ in range(n_splits):
        rows = split_pairs(pair_ids, rng)
        shuffled = shuffle_within_pairs(y, pair_ids, rng)
        for name, labels in (("observed", y), ("permuted", shuffled)):
            a, b = _half_scores(x, labels, rows, scorer)
            entry = {"spearman": spearman(a, b)}
            layered = x.ndim == 3 and name == "observed"  # the permuted rows' is unused
            for fraction in fractions:
                found = compare_scores(a, b, fraction, per_layer_chance=layered)
                entry[f"jaccard@{fraction:g}"] = found["jaccard"]
                entry[f"dice@{fraction:g}"] = found["dice"]
                if "chance_jaccard_layers" in found:
                    entry[f"layers@{fraction:g}"] = found["chance_jaccard_layers"]
            per_split[name].append(entry)
    return {
        "scorer": scorer,
        "n_pairs": n_pairs,
        "n_splits": n_splits,
        "seed": seed,
        "spearman": percentile_range([s["spearman"] for s in per_split["observed"]]),
        "spearman_permuted": percentile_range([s["spearman"] for s in per_split["permuted"]]),
        "top_n": _top_n_rows(per_split, fractions, int(np.prod(x.shape[1:])), x.ndim == 3),
    }


def _top_n_rows(
    per_split: dict[str, list[dict[str, float]]],
    fractions: Sequence[float],
    total: int,
    layered: bool,
) -> list[dict[str, Any]]:
    """Per top-N fraction: the split-half overlaps' spread beside their chance levels."""
    rows = []
    for fraction in fractions:
        k = n_selected(fraction, total)
        chance = chance_overlap(k, k, total)
        row: dict[str, Any] = {"top_n": fraction, "k": k}
        for metric in ("jaccard", "dice"):
            key = f"{metric}@{fraction:g}"
            row[metric] = percentile_range([s[key] for s in per_split["observed"]])
            row[f"{metric}_permuted"] = percentile_range([s[key] for s in per_split["permuted"]])
            row[f"{metric}_chance"] = chance[metric]
        if layered:  # chance given the layers each half's selection fell in
            row["jaccard_chance_layers"] = float(
                np.mean([s[f"layers@{fraction:g}"] for s in per_split["observed"]])
            )
        rows.append(row)
    return rows


def across_halves(
    a: tuple[np.ndarray, np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray, np.ndarray],
    scorer: str,
    fractions: Sequence[float],
    n_splits: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Overlap of two runs' top-N selections, each made from half of its run's pairs.

    `a` and `b` are (activations, labels, pair ids) of runs whose units correspond. Per
    split, a random half of each run's pairs selects its top-N; Jaccard and Spearman are
    summarised over splits (a spread, as in `split_half_consistency`), beside the chance overlap.
    """
    rng = np.random.default_rng(seed)
    per_split: list[dict[str, float]] = []
    for _ in range(n_splits):
        half_a, half_b = (
            run_scorer(scorer, x[rows], np.asarray(y)[rows])
            for x, y, pair_ids in (a, b)
            for rows in [split_pairs(np.asarray(pair_ids), rng)[0]]
        )
        entry = {"spearman": spearman(half_a, half_b)}
        for fraction in fractions:
            entry[f"jaccard@{fraction:g}"] = compare_scores(half_a, half_b, fraction)["jaccard"]
        per_split.append(entry)
    total = int(np.prod(a[0].shape[1:]))
    return {
        "n_splits": n_splits,
        "spearman": percentile_range([s["spearman"] for s in per_split]),
        "top_n": [
            {
                "top_n": fraction,
                "jaccard": percentile_range([s[f"jaccard@{fraction:g}"] for s in per_split]),
                "jaccard_chance": chance_overlap(
                    n_selected(fraction, total), n_selected(fraction, total), total
                )["jaccard"],
            }
            for fraction in fractions
        ],
    }
