"""`memgen compare`: which neurons correspond across runs, and the spread of headline numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from memgen.core.stats import SHARE, summarise
from memgen.report.compare import correspondence


def train_manifest(model: str, weights: str) -> dict[str, object]:
    return {
        "config": {"train": {"model": model}},
        "outputs": {"history.json": "h", f"model/{weights}.safetensors": weights},
    }


def test_neurons_correspond_only_on_shared_weights_or_a_shared_base() -> None:
    scratch_a, scratch_b = train_manifest("scratch", "aaa"), train_manifest("scratch", "bbb")
    assert correspondence(scratch_a, scratch_a) == "same trained weights"
    # Two GPT-2s trained from scratch: units are only defined up to a permutation.
    assert correspondence(scratch_a, scratch_b) is None
    lora_a, lora_b = train_manifest("bases/tiny", "ad1"), train_manifest("bases/tiny", "ad2")
    assert correspondence(lora_a, lora_b) == "fine-tuned from the same base (bases/tiny)"
    assert correspondence(lora_a, train_manifest("bases/other", "ad2")) is None


def test_summary_is_the_mean_with_a_t_interval() -> None:
    values = [0.31, 0.42, 0.37, 0.29]
    found = summarise(values)
    sem = np.std(values, ddof=1) / np.sqrt(len(values))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sem)
    assert found["mean"] == pytest.approx(np.mean(values))
    assert found["sd"] == pytest.approx(np.std(values, ddof=1))
    assert (found["ci_low"], found["ci_high"]) == pytest.approx((low, high))
    assert (found["min"], found["max"]) == (0.29, 0.42)
    single = summarise([0.5])
    assert single["mean"] == 0.5 and single["sd"] is None and single["ci_low"] is None


def test_a_share_interval_stays_within_zero_and_one() -> None:
    draws = [0.02, 0.0, 0.9, 0.97, 0.99]  # five random draws, two of them near zero
    free = summarise(draws)
    assert free["ci_low"] < 0 and free["ci_high"] > 1  # the t-interval leaves [0, 1]
    clipped = summarise(draws, SHARE)
    assert (clipped["ci_low"], clipped["ci_high"]) == (0.0, 1.0)
    assert clipped["mean"] == free["mean"] and clipped["sd"] == free["sd"]
