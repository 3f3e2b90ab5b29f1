"""Consistency of neuron selections: overlap metrics, chance baselines, split-half agreement."""

from __future__ import annotations

import numpy as np
import pytest

from memgen.core.errors import MemgenError
from memgen.core.neuron_set import NeuronSet
from memgen.neurons.consistency import (
    across_halves,
    chance_overlap,
    compare_scores,
    compare_sets,
    dice,
    jaccard,
    layer_chance_jaccard,
    shuffle_within_pairs,
    split_half_consistency,
    split_pairs,
)

MODEL = {"model_type": "gpt2", "num_hidden_layers": 2, "hidden_size": 32, "name_or_path": ""}


def paired_data(signal: float, seed: int = 0, n_pairs: int = 60) -> tuple[np.ndarray, ...]:
    """Pairs of (mem, gen) rows sharing a random pair-specific offset; 10 neurons carry signal."""
    rng = np.random.default_rng(seed)
    pair_ids = np.repeat(np.arange(n_pairs), 2)
    y = np.tile([1, 0], n_pairs)
    x = rng.normal(size=(2 * n_pairs, 3, 40)) + rng.normal(size=(n_pairs, 1, 40)).repeat(2, 0)
    x[y == 1, 2, :10] += signal
    return x.astype(np.float32), y, pair_ids


def test_jaccard_and_dice() -> None:
    a, b = np.array([1, 2, 3, 4]), np.array([3, 4, 5, 6])
    assert jaccard(a, a) == 1.0 and dice(a, a) == 1.0
    assert jaccard(a, b) == pytest.approx(2 / 6)
    assert dice(a, b) == pytest.approx(4 / 8)


def test_chance_overlap_matches_simulation() -> None:
    rng = np.random.default_rng(0)
    total, k = 60, 12
    sims = [jaccard(rng.choice(total, k, replace=False), rng.choice(total, k, replace=False))
            for _ in range(4000)]  # fmt: skip
    expected = chance_overlap(k, k, total)
    assert expected["jaccard"] == pytest.approx(np.mean(sims), abs=0.01)
    assert expected["dice"] == pytest.approx(k / total)
    assert chance_overlap(total, total, total)["jaccard"] == pytest.approx(1.0)


def test_identical_scores_overlap_fully() -> None:
    s = np.random.default_rng(0).normal(size=(3, 40))
    result = compare_scores(s, s.copy(), 0.1)
    assert result["jaccard"] == 1.0 and result["dice"] == 1.0
    assert result["spearman"] == pytest.approx(1.0)
    assert result["chance_jaccard"] < 0.1
    # NMD signs: all agree with itself, none with its negation, on the 12 shared neurons.
    nmd = np.random.default_rng(1).normal(size=s.shape)
    assert compare_scores(s, s, 0.1, nmd=(nmd, nmd))["sign_agreement"] == 1.0
    flipped = compare_scores(s, s, 0.1, nmd=(nmd, -nmd))
    assert flipped["sign_agreement"] == 0.0 and flipped["n_shared"] == 12
    disjoint = compare_scores(s, -np.sign(s) * (10 - np.abs(s)), 0.1, nmd=(nmd, nmd))
    assert disjoint["jaccard"] == 0.0 and np.isnan(disjoint["sign_agreement"])
    with pytest.raises(MemgenError, match="same model"):
        compare_scores(s, s[:2], 0.1)


def test_layer_chance_matches_simulation_and_exceeds_global_chance() -> None:
    rng = np.random.default_rng(0)
    n_layers, width = 6, 40
    counts_a, counts_b = [0, 0, 0, 8, 6, 6], [0, 0, 1, 9, 5, 5]  # both sets in late layers

    def draw(counts: list[int]) -> np.ndarray:
        return np.concatenate(
            [layer * width + rng.choice(width, c, replace=False) for layer, c in enumerate(counts)]
        )

    top_a, top_b = draw(counts_a), draw(counts_b)
    expected = layer_chance_jaccard(top_a, top_b, (n_layers, width))
    sims = [jaccard(draw(counts_a), draw(counts_b)) for _ in range(4000)]
    assert expected == pytest.approx(np.mean(sims), abs=0.01)
    assert expected > 1.5 * chance_overlap(20, 20, n_layers * width)["jaccard"]
    # In one layer it is the one-layer hypergeometric chance.
    one = layer_chance_jaccard(np.arange(5), np.arange(10, 15), (n_layers, width))
    assert one == pytest.approx(chance_overlap(5, 5, width)["jaccard"])
    s = rng.normal(size=(n_layers, width))
    found = compare_scores(s, s, 0.05, per_layer_chance=True)
    assert found["chance_jaccard_layers"] >= found["chance_jaccard"]


def test_split_pairs_keeps_pairs_together() -> None:
    pair_ids = np.repeat(np.arange(11), 2)
    a, b = split_pairs(pair_ids, np.random.default_rng(0))
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(pair_ids)
    assert not set(pair_ids[a]) & set(pair_ids[b])


def test_shuffle_within_pairs_keeps_each_pair_balanced() -> None:
    pair_ids = np.repeat(np.arange(50), 2)[::-1].copy()
    y = np.tile([1, 0], 50)
    shuffled = shuffle_within_pairs(y, pair_ids, np.random.default_rng(0))
    assert all(sorted(shuffled[pair_ids == p]) == [0, 1] for p in range(50))
    assert 0 < (shuffled != y).sum() < len(y)  # some pairs flipped, not all


def test_planted_signal_is_consistent_well_above_chance() -> None:
    x, y, pair_ids = paired_data(signal=2.0)
    report = split_half_consistency(x, y, pair_ids, "pearson", [10 / 120], n_splits=5, seed=0)
    row = report["top_n"][0]
    assert row["k"] == 10
    assert row["jaccard"]["mean"] > 0.6
    assert row["jaccard"]["mean"] > 5 * row["jaccard_chance"]
    # Both halves pick layer 2, where chance is higher, and still beat it.
    assert row["jaccard_chance_layers"] > 2 * row["jaccard_chance"]
    assert row["jaccard"]["mean"] > 3 * row["jaccard_chance_layers"]
    assert row["jaccard_permuted"]["mean"] < 0.3
    assert row["jaccard"]["ci_low"] <= row["jaccard"]["mean"] <= row["jaccard"]["ci_high"]


def test_pure_noise_is_near_chance() -> None:
    x, y, pair_ids = paired_data(signal=0.0, seed=1)
    report = split_half_consistency(x, y, pair_ids, "nmd", [0.1], n_splits=8, seed=0)
    row = report["top_n"][0]
    assert abs(row["jaccard"]["mean"] - row["jaccard_chance"]) < 0.08
    assert abs(report["spearman"]["mean"]) < 0.2


def test_split_half_is_deterministic_and_needs_pairs() -> None:
    x, y, pair_ids = paired_data(signal=1.0, n_pairs=12)
    first = split_half_consistency(x, y, pair_ids, "pearson", [0.05], n_splits=3, seed=4)
    assert first == split_half_consistency(x, y, pair_ids, "pearson", [0.05], n_splits=3, seed=4)
    with pytest.raises(MemgenError, match="at least 4 pairs"):
        split_half_consistency(x[:6], y[:6], pair_ids[:6], "pearson", [0.05], n_splits=3)


def make_set(flat: list[int], nmd: list[float], site: str = "resid") -> NeuronSet:
    idx = np.array(flat)
    return NeuronSet(
        model=MODEL, site=site, scorer="pearson", top_n=0.05, n_layers=2, width=32,
        layers=idx // 32, neurons=idx % 32, nmd=np.array(nmd, dtype=np.float32),
        score=np.array(nmd, dtype=np.float32),
    )  # fmt: skip


def test_compare_sets() -> None:
    a = make_set([1, 40, 50], [0.5, -0.2, 0.3])
    b = make_set([40, 50, 63], [-0.1, -0.3, 0.2])
    result = compare_sets(a, b)
    assert result["n_shared"] == 2
    assert result["jaccard"] == pytest.approx(2 / 4)
    assert result["sign_agreement"] == pytest.approx(0.5)
    assert compare_sets(a, a)["jaccard"] == 1.0
    assert result["chance_jaccard"] == pytest.approx(chance_overlap(3, 3, 64)["jaccard"])
    with pytest.raises(MemgenError, match="same model and site"):
        compare_sets(a, make_set([1], [0.1], site="attn"))


def test_across_halves_finds_shared_neurons_and_not_disjoint_ones() -> None:
    a = paired_data(signal=3.0, seed=0)
    b = paired_data(signal=3.0, seed=1)  # the same 10 neurons carry the signal
    shared = across_halves(a, b, "pearson", [0.1], n_splits=6)
    (row,) = shared["top_n"]
    assert row["jaccard"]["ci_low"] > 0.5 > 5 * row["jaccard_chance"]
    x, y, pair_ids = paired_data(signal=3.0, seed=2)
    moved = np.concatenate([x[:, :, 10:], x[:, :, :10]], axis=2)  # signal in other neurons
    apart = across_halves(a, (moved, y, pair_ids), "pearson", [0.1], n_splits=6)
    assert apart["top_n"][0]["jaccard"]["mean"] < 0.2
    assert across_halves(a, b, "pearson", [0.1], n_splits=6) == shared  # seeded
