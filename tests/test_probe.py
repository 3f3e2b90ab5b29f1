"""Behaviour probes: planted signal, folds that keep pairs together, determinism, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memgen.core.artifacts import Stage, write_json
from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.pipeline import run_stage
from memgen.probe.probes import (
    PROBES,
    accuracy,
    decision_scores,
    fit_probe,
    fold_assignment,
    layer_accuracies,
    learning_curve,
    majority_baseline,
    pair_ordering,
    shuffled_baseline,
)


def paired(n_pairs: int = 40, width: int = 12, seed: int = 0) -> tuple[np.ndarray, ...]:
    """[2 * n_pairs, 3, width]; layer 1 carries a linear mem/gen signal, layers 0 and 2 noise.

    Twins share a large pair-specific offset, as real pair members share their prompt.
    """
    rng = np.random.default_rng(seed)
    y = np.tile([1, 0], n_pairs)
    pair_ids = np.repeat(rng.permutation(n_pairs) + 100, 2)
    x = rng.normal(size=(2 * n_pairs, 3, width))
    x += 2 * rng.normal(size=(n_pairs, 1, width)).repeat(2, axis=0)
    direction = rng.normal(size=width)
    x[:, 1] += np.outer(np.where(y == 1, 1.0, -1.0), direction / np.linalg.norm(direction) * 5)
    return x.astype(np.float32), y, pair_ids


@pytest.mark.parametrize("classifier", ["logreg", "lda", "svm", "mean_diff"])
def test_planted_signal_found_in_its_layer_only(classifier: str) -> None:
    x, y, pair_ids = paired()
    rows = layer_accuracies(x, y, pair_ids, classifier, folds=5, seed=0)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    assert rows[1]["accuracy"] > 0.9
    assert rows[1]["ci_low"] < rows[1]["accuracy"] < rows[1]["ci_high"]
    for noise in (rows[0], rows[2]):
        assert noise["ci_low"] < 0.5 + 0.1 and noise["accuracy"] < 0.7


def test_folds_never_split_a_pair() -> None:
    _, _, pair_ids = paired(n_pairs=23)
    fold = fold_assignment(pair_ids, folds=5, seed=3)
    for pair in np.unique(pair_ids):
        assert len(set(fold[pair_ids == pair])) == 1
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]
    assert not np.array_equal(fold, fold_assignment(pair_ids, folds=5, seed=4))
    with pytest.raises(MemgenError, match=r"probe\.folds"):
        fold_assignment(pair_ids[:8], folds=5, seed=0)


def test_deterministic_for_a_seed() -> None:
    x, y, pair_ids = paired(n_pairs=20)
    first = layer_accuracies(x[:, :2], y, pair_ids, "logreg", folds=3, seed=7)
    assert first == layer_accuracies(x[:, :2], y, pair_ids, "logreg", folds=3, seed=7)
    curve = learning_curve(x[:, 1], y, pair_ids, "logreg", [2, 8], seed=7, repeats=2)
    assert curve == learning_curve(x[:, 1], y, pair_ids, "logreg", [2, 8], seed=7, repeats=2)
    other = learning_curve(x[:, 1], y, pair_ids, "logreg", [2, 8], seed=8, repeats=2)
    assert other != curve


def test_learning_curve_and_baselines() -> None:
    x, y, pair_ids = paired(n_pairs=40)
    curve = learning_curve(x[:, 1], y, pair_ids, "logreg", [1, 5, 25, 500], seed=0, repeats=4)
    assert curve["n_test_pairs"] == 10
    sizes = [p["n_pairs"] for p in curve["points"]]
    assert sizes == [1, 5, 25, 30]  # 500 is capped at the 30 training pairs available
    assert curve["points"][-1]["accuracy"] > 0.9
    assert all(len(p["values"]) == 4 for p in curve["points"])
    assert majority_baseline(y, pair_ids, 5, 0)["accuracy"] == pytest.approx(0.5)
    assert shuffled_baseline(x[:, 1], y, pair_ids, "logreg", 5, 0)["accuracy"] < 0.75


def test_unknown_classifier() -> None:
    with pytest.raises(MemgenError, match="did you mean 'logreg'"):
        PROBES.get("logreq")


def write_record(run_dir: Path) -> None:
    """A finished `record` folder with resid [N, 3, 12] and mlp [N, 3, 24]."""
    x, y, pair_ids = paired()
    out = Stage(run_dir, "record").begin()
    np.save(out / "resid.npy", x)
    np.save(out / "mlp.npy", np.concatenate([x[:, [0, 2, 0]], x[:, [2, 0, 2]]], axis=2))
    index = {
        "labels": y.tolist(),
        "pair_ids": pair_ids.tolist(),
        "sites": {"resid": {"n_layers": 3, "width": 12}, "mlp": {"n_layers": 3, "width": 24}},
        "model": {"model_type": "gpt2", "num_hidden_layers": 3, "hidden_size": 12},
    }
    write_json(out / "index.json", index)
    Stage(run_dir, "record").finish({}, [], 0)


def test_probe_stage_writes_its_files(tmp_path: Path) -> None:
    write_record(tmp_path)
    # LDA: the stage's plumbing is under test here, and it fits fastest.
    cfg = load_config(
        None, ["probe.learning_curve=[2,10]", "probe.folds=4", "probe.classifier=lda"]
    )
    stage = run_stage("probe", tmp_path, cfg)
    for name in (
        "per_layer.json",
        "learning_curve.json",
        "baseline.json",
        "accuracy.png",
        "learning_curve.png",
    ):
        assert (stage.path / name).is_file(), name
    per_layer = json.loads((stage.path / "per_layer.json").read_text())
    assert {(r["site"], r["layer"]) for r in per_layer} == {
        (s, layer) for s in ("resid", "mlp") for layer in range(3)
    }
    summary = stage.manifest()["summary"]
    assert (summary["best"]["site"], summary["best"]["layer"]) == ("resid", 1)
    assert summary["best"]["accuracy"] > 0.9
    assert summary["baseline"]["majority"] == pytest.approx(0.5)
    curve = json.loads((stage.path / "learning_curve.json").read_text())
    assert [p["n_pairs"] for p in curve["points"]] == [2, 10]
    assert run_stage("probe", tmp_path, cfg).manifest() == stage.manifest()  # up to date: skipped


def test_probe_stage_needs_enough_pairs(tmp_path: Path) -> None:
    write_record(tmp_path)
    with pytest.raises(MemgenError, match="cannot fill 50 folds"):
        run_stage("probe", tmp_path, load_config(None, ["probe.folds=50"]))
    assert not (tmp_path / "probe").exists()


@pytest.mark.parametrize("classifier", sorted(PROBES.names()))
def test_pair_ordering_reads_a_direction_that_accuracy_misses_under_an_offset(
    classifier: str,
) -> None:
    """A probe carried to data shifted as a whole keeps its direction, not its threshold."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)

    def flipped_pairs(n: int, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = rng.normal(size=(n, 16)) + offset * np.ones(16)
        x = np.concatenate([base + 0.5 * direction, base - 0.5 * direction])
        y = np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])
        return x, y, np.concatenate([np.arange(n), np.arange(n)])

    x, y, _ = flipped_pairs(200, 0.0)
    probe = fit_probe(classifier, 0, x, y)
    x_far, y_far, ids_far = flipped_pairs(150, 40.0)  # another task: everything moved
    scores = decision_scores(probe, x_far)
    assert accuracy(probe.predict(x_far), y_far)["accuracy"] < 0.6  # one side of the line
    ordered = pair_ordering(scores, y_far, ids_far)
    assert ordered["share"] > 0.95 and ordered["n"] == 150 and ordered["ci_low"] > 0.9
    # Reversed labels order every pair wrongly; a row without its twin is not a pair.
    assert pair_ordering(scores, 1 - y_far, ids_far)["share"] < 0.05
    with pytest.raises(MemgenError, match="no pair has one member of each"):
        pair_ordering(scores[:150], y_far[:150], ids_far[:150])
