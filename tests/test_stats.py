"""Rank p-values and prediction intervals: the yardsticks of "is this set special"."""

from __future__ import annotations

import numpy as np
import pytest

from memgen.core.stats import SHARE, prediction_interval, rank_p_value


def test_rank_p_value_counts_draws_at_least_as_extreme() -> None:
    assert rank_p_value(0.9, [0.1] * 19) == pytest.approx(0.05)  # the floor of 19 draws
    assert rank_p_value(0.9, [0.1, 0.9, 0.95, 0.2]) == pytest.approx(3 / 5)
    assert rank_p_value(0.0, [0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        rank_p_value(0.5, [])


def test_a_planted_effect_gets_a_small_p_and_a_null_one_a_uniform_p() -> None:
    rng = np.random.default_rng(0)
    null = [rank_p_value(rng.normal(), list(rng.normal(size=19))) for _ in range(10_000)]
    assert np.mean(np.asarray(null) <= 0.05) == pytest.approx(0.05, abs=0.01)  # 4.5 SE
    planted = [rank_p_value(rng.normal(3.0), list(rng.normal(size=19))) for _ in range(500)]
    assert np.mean(np.asarray(planted) <= 0.05) > 0.8


def test_the_prediction_interval_covers_95_percent_of_new_draws() -> None:
    rng = np.random.default_rng(1)
    covered = []
    for _ in range(4000):
        low, high = prediction_interval(list(rng.normal(size=5)))  # type: ignore[misc]
        covered.append(low <= rng.normal() <= high)
    assert np.mean(covered) == pytest.approx(0.95, abs=0.012)
    assert prediction_interval([0.5]) is None
    assert prediction_interval([0.0, 0.02, 1.0], SHARE) == [0.0, 1.0]


def test_holm_adjusts_in_input_order_and_never_lowers_a_p_value() -> None:
    from memgen.core.stats import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([]) == []
    p = np.random.default_rng(0).random(50)
    adjusted = np.asarray(holm(list(p)))
    assert (adjusted >= p).all() and (adjusted <= 1).all()
    # The smallest survives only if it is below 0.05 / m.
    assert holm([0.05 / 20] + [0.9] * 19)[0] == pytest.approx(0.05)
