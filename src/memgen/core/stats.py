"""Small statistics: behaviour rates with Wilson intervals, selection scores."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

from memgen.core.examples import BEHAVIOURS

SHARE = (0.0, 1.0)  # the range of a rate, for `summarise(..., bounds=SHARE)`


def wilson(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion (well behaved near 0 and 1); none of an
    empty sample."""
    if total == 0:
        return 0.0, 1.0
    ci = stats.binomtest(successes, total).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rates(labels: Iterable[str]) -> dict[str, float]:
    counts = Counter(labels)
    total = sum(counts.values())
    return {b: counts[b] / total if total else 0.0 for b in BEHAVIOURS}


def rates_with_ci(labels: Iterable[str]) -> dict[str, dict[str, float]]:
    counts = Counter(labels)
    total = sum(counts.values())
    table: dict[str, dict[str, float]] = {}
    for behaviour in BEHAVIOURS:
        low, high = wilson(counts[behaviour], total)
        share = counts[behaviour] / total if total else 0.0
        table[behaviour] = {"rate": share, "ci_low": low, "ci_high": high, "n": counts[behaviour]}
    return table


def intervals(labels: Iterable[str]) -> dict[str, list[float]]:
    """Per behaviour, the 95% Wilson interval [low, high] of its share of `labels`."""
    return {b: [v["ci_low"], v["ci_high"]] for b, v in rates_with_ci(labels).items()}


def summarise(
    values: Sequence[float], bounds: tuple[float, float] | None = None
) -> dict[str, float | int | None]:
    """Mean, sample sd and the 95% t-interval of the mean (None below two values).

    `bounds` clips the interval to the values' range: a share over five random draws can
    have a t-interval past 0 or 1, which no draw could reach.
    """
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    mean = float(array.mean())
    if n < 2:
        return {
            "n": n,
            "mean": mean,
            "sd": None,
            "ci_low": None,
            "ci_high": None,
            "min": mean,
            "max": mean,
        }
    sd = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / np.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "ci_low": low,
        "ci_high": high,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def rank_p_value(observed: float, draws: Sequence[float]) -> float:
    """One-sided rank p-value of `observed` among random `draws` (larger is more extreme):
    (1 + draws at least as large) / (1 + draws). With k draws it cannot go below
    1 / (k + 1): 19 draws are the fewest that can say p = 0.05."""
    if not draws:
        raise ValueError("a rank p-value needs at least one random draw")
    return (1 + sum(draw >= observed for draw in draws)) / (1 + len(draws))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order: each cell of a family may then
    be read at 0.05 with the family-wise error held at 5%. Rank p-values from k draws are
    at least 1 / (k + 1), so m cells need about 20m draws for any to survive."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def prediction_interval(
    draws: Sequence[float], bounds: tuple[float, float] | None = None
) -> list[float] | None:
    """95% interval for one more random draw (mean ± t sd sqrt(1 + 1/n)), None below two:
    where a single random set would land, which a selected set must clear to be special
    (the interval of the draws' mean is much narrower and answers another question)."""
    array = np.asarray(draws, dtype=np.float64)
    n = len(array)
    if n < 2:
        return None
    half = float(stats.t.ppf(0.975, n - 1)) * float(array.std(ddof=1)) * np.sqrt(1 + 1 / n)
    low, high = float(array.mean()) - half, float(array.mean()) + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return [low, high]
