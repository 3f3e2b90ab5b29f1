"""Behaviour probes: predict mem vs gen from one layer's activations, cross-validated by pair.

    from memgen.probe.probes import PROBES, layer_accuracies, learning_curve
    rows = layer_accuracies(X, y, pair_ids, "logreg", folds=5, seed=0)   # X [N, L, D]
    curve = learning_curve(X[:, best], y, pair_ids, "logreg", [10, 50, 200], seed=0)

Folds come from GroupKFold over pair ids, so both members of a flipped pair are
always on the same side: a probe never sees one twin while predicting the other,
which would let it memorise prompt content instead of reading the behaviour.
Accuracy pools every held-out prediction and carries a 95% Wilson interval.

Classifiers (`probe.classifier`):
- `logreg`: standardise, then L2 logistic regression with C=0.1 (activations have
  as many dimensions as there are pairs, so some shrinkage keeps it stable);
- `lda`: standardise, then linear discriminant with Ledoit-Wolf shrinkage;
- `svm`: standardise, then a linear SVM (C=0.01);
- `mean_diff`: nearest class mean along mean(mem) - mean(gen), i.e. projection on
  the NMD direction that steering uses; no fitted weights beyond the two means.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from memgen.core.errors import MemgenError
from memgen.core.registry import Registry
from memgen.core.stats import wilson

log = logging.getLogger(__name__)


class Classifier(Protocol):
    def fit(self, x: np.ndarray, y: np.ndarray) -> Any: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


PROBES: Registry[Callable[[int], Classifier]] = Registry("probe classifier")


@PROBES.register("logreg")
def logreg(seed: int) -> Classifier:
    model = LogisticRegression(C=0.1, max_iter=5000, random_state=seed)
    return make_pipeline(StandardScaler(), model)  # type: ignore[no-any-return]


@PROBES.register("lda")
def lda(seed: int) -> Classifier:
    model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    return make_pipeline(StandardScaler(), model)  # type: ignore[no-any-return]


@PROBES.register("svm")
def svm(seed: int) -> Classifier:
    model = LinearSVC(C=0.01, max_iter=20_000, random_state=seed)
    return make_pipeline(StandardScaler(), model)  # type: ignore[no-any-return]


class MeanDiff:
    """Classify by which side of the midpoint between the class means a row projects to."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> MeanDiff:
        x = np.asarray(x, dtype=np.float64)
        mem, gen = x[y == 1].mean(axis=0), x[y == 0].mean(axis=0)
        self.direction = mem - gen
        self.threshold = float(self.direction @ (mem + gen) / 2)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        projection = np.asarray(x, dtype=np.float64) @ self.direction
        return (projection > self.threshold).astype(np.int64)


@PROBES.register("mean_diff")
def mean_diff(seed: int) -> Classifier:
    return MeanDiff()


def fold_assignment(pair_ids: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Held-out fold of every row; the rows of one pair always share a fold."""
    pair_ids = np.asarray(pair_ids)
    n_pairs = len(np.unique(pair_ids))
    if n_pairs < folds:
        raise MemgenError(
            f"probe: {n_pairs} pairs cannot fill {folds} folds; lower probe.folds "
            "or mine more flipped pairs (behave.target_flips)"
        )
    fold = np.empty(len(pair_ids), dtype=np.int64)
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(pair_ids, groups=pair_ids)):
        fold[test] = i
    return fold


def fit_probe(classifier: str, seed: int, x: np.ndarray, y: np.ndarray) -> Classifier:
    if len(np.unique(y)) < 2:
        raise MemgenError("probe: a training split holds one behaviour only; use flipped pairs")
    model = PROBES.get(classifier)(seed)
    model.fit(x, y)
    return model


def cv_predict(
    x: np.ndarray, y: np.ndarray, fold: np.ndarray, classifier: str, seed: int
) -> np.ndarray:
    """Held-out prediction for every row, from a probe fitted on the other folds."""
    predictions = np.empty(len(y), dtype=np.int64)
    for k in np.unique(fold):
        test = fold == k
        model = fit_probe(classifier, seed, x[~test], y[~test])
        predictions[test] = model.predict(x[test])
    return predictions


def accuracy(predictions: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Share correct with its 95% Wilson interval."""
    correct = int((np.asarray(predictions) == np.asarray(y)).sum())
    low, high = wilson(correct, len(y))
    return {"accuracy": correct / len(y), "ci_low": low, "ci_high": high, "n": len(y)}


def decision_scores(model: Classifier, x: np.ndarray) -> np.ndarray:
    """The probe's signed score per row (higher leans memorization), before any threshold."""
    if isinstance(model, MeanDiff):
        return np.asarray(x, dtype=np.float64) @ model.direction - model.threshold
    return np.asarray(model.decision_function(x), dtype=np.float64)  # type: ignore[attr-defined]


def pair_ordering(scores: np.ndarray, y: np.ndarray, pair_ids: np.ndarray) -> dict[str, float]:
    """Share of flipped pairs whose mem member scores above its gen member (chance 0.5).

    Threshold-free: an offset that moves every score of a run alike (another task's
    prompts sit elsewhere in activation space) cancels within a pair, so this asks only
    whether the probe's direction orders the two behaviours. Ties count half.
    """
    mem = {int(p): float(s) for p, s, label in zip(pair_ids, scores, y, strict=True) if label}
    gen = {int(p): float(s) for p, s, label in zip(pair_ids, scores, y, strict=True) if not label}
    pairs = sorted(set(mem) & set(gen))
    if not pairs:
        raise MemgenError("no pair has one member of each behaviour: use flipped pairs")
    wins = sum(1.0 if mem[p] > gen[p] else 0.5 if mem[p] == gen[p] else 0.0 for p in pairs)
    low, high = wilson(round(wins), len(pairs))
    return {"share": wins / len(pairs), "ci_low": low, "ci_high": high, "n": len(pairs)}


def layer_accuracies(
    x: np.ndarray, y: np.ndarray, pair_ids: np.ndarray, classifier: str, folds: int, seed: int
) -> list[dict[str, float]]:
    """Cross-validated accuracy of a probe on each layer of X [N, L, D]."""
    fold = fold_assignment(pair_ids, folds, seed)
    rows = []
    for layer in range(x.shape[1]):
        features = np.asarray(x[:, layer, :], dtype=np.float32)
        rows.append(
            {"layer": layer, **accuracy(cv_predict(features, y, fold, classifier, seed), y)}
        )
    return rows


def majority_baseline(
    y: np.ndarray, pair_ids: np.ndarray, folds: int, seed: int
) -> dict[str, float]:
    """Predict each held-out fold with its training folds' majority behaviour."""
    fold = fold_assignment(pair_ids, folds, seed)
    predictions = np.empty(len(y), dtype=np.int64)
    for k in np.unique(fold):
        train = fold != k
        predictions[~train] = int(y[train].mean() > 0.5)
    return accuracy(predictions, y)


def shuffled_baseline(
    x: np.ndarray, y: np.ndarray, pair_ids: np.ndarray, classifier: str, folds: int, seed: int
) -> dict[str, float]:
    """The same probe on the same features with the labels shuffled: what chance looks like."""
    shuffled = np.random.default_rng(seed).permutation(y)
    fold = fold_assignment(pair_ids, folds, seed)
    return accuracy(cv_predict(x, shuffled, fold, classifier, seed), y=shuffled)


def learning_curve(
    x: np.ndarray,
    y: np.ndarray,
    pair_ids: np.ndarray,
    classifier: str,
    sizes: Sequence[int],
    seed: int,
    repeats: int = 10,
    test_share: float = 0.25,
) -> dict[str, Any]:
    """Held-out accuracy against the number of training pairs, over seeded repeats.

    Each repeat holds out `test_share` of the pairs for testing and trains on the first
    n of the rest, so every size is tested on the same pairs within a repeat. Sizes
    above what is available are replaced by "all available pairs".
    """
    pair_ids = np.asarray(pair_ids)
    unique = np.unique(pair_ids)
    n_test = max(1, round(test_share * len(unique)))
    pool = len(unique) - n_test
    if pool < 1:
        raise MemgenError(f"probe: {len(unique)} pairs are too few for a learning curve")
    wanted = sorted({min(int(n), pool) for n in sizes if n >= 1})
    if any(n > pool for n in sizes):
        log.info("probe: learning curve capped at the %d available training pairs", pool)
    rng = np.random.default_rng(seed)
    scores: dict[int, list[float]] = {n: [] for n in wanted}
    for _ in range(repeats):
        order = rng.permutation(unique)
        test = np.isin(pair_ids, order[:n_test])
        for n in wanted:
            train = np.isin(pair_ids, order[n_test : n_test + n])
            model = fit_probe(classifier, seed, x[train], y[train])
            scores[n].append(float((model.predict(x[test]) == y[test]).mean()))
    points = []
    for n, values in scores.items():
        low, high = np.percentile(values, [2.5, 97.5])
        summary = {"accuracy": float(np.mean(values)), "ci_low": float(low), "ci_high": float(high)}
        points.append({"n_pairs": n, **summary, "values": values})
    return {"classifier": classifier, "repeats": repeats, "n_test_pairs": n_test, "points": points}


def readout_accuracies(
    margins: np.ndarray, y: np.ndarray, pair_ids: np.ndarray
) -> list[dict[str, float]]:
    """Per layer, how well the answer readout's margin [N, L] predicts the behaviour.

    `accuracy` reads each prompt alone (margin > 0 -> mem); `paired_accuracy` is the
    share of flipped pairs whose mem member has the larger margin (chance 50%). No
    fitting, so no folds. Rows with a NaN margin (answers sharing a first token) and
    their pair partners are left out.
    """
    margins, y, pair_ids = np.asarray(margins), np.asarray(y), np.asarray(pair_ids)
    usable = ~np.isnan(margins).any(axis=1)
    mem_row: dict[int, int] = {}
    gen_row: dict[int, int] = {}
    for row in np.flatnonzero(usable):
        (mem_row if y[row] == 1 else gen_row)[int(pair_ids[row])] = int(row)
    both = sorted(mem_row.keys() & gen_row.keys())
    if not both:
        return []
    mem = np.array([mem_row[p] for p in both])
    gen = np.array([gen_row[p] for p in both])
    keep = np.concatenate([mem, gen])
    rows = []
    for layer in range(margins.shape[1]):
        alone = accuracy((margins[keep, layer] > 0).astype(np.int64), y[keep])
        paired = int((margins[mem, layer] > margins[gen, layer]).sum())
        low, high = wilson(paired, len(both))
        rows.append(
            {
                "layer": layer,
                **alone,
                "paired_accuracy": paired / len(both),
                "paired_ci_low": low,
                "paired_ci_high": high,
                "n_pairs": len(both),
            }
        )
    return rows
