"""Neuron scorers: how strongly each neuron's activation separates mem rows from gen rows.

    from memgen.neurons.scores import SCORERS, score
    nmd = score("nmd", X, y)          # X [N, L, D] (or [N, F]), y [N] with 1 = mem, 0 = gen
    r = score("pearson", X, y)        # -> [L, D] (or [F])

Every scorer is signed so that a positive value leans memorization; selection ranks
by the absolute value. All of them are vectorised over neurons; the only Python loop
is over column blocks, which bounds memory when X is a memory-mapped record array.

- `nmd`: mean over mem rows minus mean over gen rows (the paper's NMD).
- `pearson`: correlation of activation with the binary label (point-biserial);
  a constant neuron scores 0.
- `t`: Welch's t statistic (mem vs gen); a neuron constant in both groups scores 0.
- `auroc`: rank-based separation, returned as 2 * AUROC - 1 (the rank-biserial
  correlation) so that 0 is chance and the sign and |.| ranking match the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from memgen.core.errors import MemgenError
from memgen.core.registry import Registry

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
BlockScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]

SCORERS: Registry[Scorer] = Registry("neuron scorer")

# Float64 working memory per block (bytes); large enough that numpy, not Python, dominates.
_BLOCK_BYTES = 64 << 20


def check_labels(y: np.ndarray, n_rows: int) -> np.ndarray:
    """The labels as a bool mask (True = mem); both behaviours must be present."""
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != n_rows:
        raise MemgenError(
            f"labels have shape {labels.shape} but the activations have {n_rows} rows; "
            "re-run `memgen record`"
        )
    if not np.isin(labels, (0, 1)).all():
        raise MemgenError("labels must be 1 (mem) or 0 (gen); re-run `memgen record`")
    mask = labels.astype(bool)
    if mask.all() or not mask.any():
        raise MemgenError(
            "the activations hold only one behaviour; mine flipped pairs with `memgen behave`"
        )
    return mask


def _blockwise(fn: BlockScorer) -> Scorer:
    """Lift a scorer of a float64 [N, f] block to X [N, ...] -> scores [...]."""

    @functools.wraps(fn)
    def scorer(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if x.ndim < 2:
            raise MemgenError(f"activations must be [rows, ...neurons], got shape {x.shape}")
        flat = x.reshape(x.shape[0], -1)
        mask = check_labels(y, flat.shape[0])
        n_rows, n_features = flat.shape
        out = np.empty(n_features, dtype=np.float64)
        step = max(1, _BLOCK_BYTES // (8 * max(n_rows, 1)))
        for start in range(0, n_features, step):
            block = np.asarray(flat[:, start : start + step], dtype=np.float64)
            out[start : start + step] = fn(block, mask)
        return out.reshape(x.shape[1:])

    return scorer


def _constant(block: np.ndarray) -> np.ndarray:
    # Exact test: a mean-centred constant column can keep ~1e-17 residue in floating point,
    # which would otherwise turn into a spurious correlation of +-1.
    result: np.ndarray = block.max(axis=0) == block.min(axis=0)
    return result


@SCORERS.register("nmd")
@_blockwise
def nmd(block: np.ndarray, mem: np.ndarray) -> np.ndarray:
    result: np.ndarray = block[mem].mean(axis=0) - block[~mem].mean(axis=0)
    return result


@SCORERS.register("pearson")
@_blockwise
def pearson(block: np.ndarray, mem: np.ndarray) -> np.ndarray:
    centred = block - block.mean(axis=0)
    label = mem.astype(np.float64)
    label -= label.mean()
    covariance = label @ centred
    scale = np.sqrt(np.einsum("ij,ij->j", centred, centred) * (label @ label))
    constant = _constant(block)
    r = np.divide(covariance, scale, out=np.zeros_like(covariance), where=~constant)
    return np.clip(r, -1.0, 1.0)


@SCORERS.register("t")
@_blockwise
def welch_t(block: np.ndarray, mem: np.ndarray) -> np.ndarray:
    a, b = block[mem], block[~mem]
    if len(a) < 2 or len(b) < 2:
        raise MemgenError("Welch t needs at least two rows of each behaviour; mine more pairs")
    se = np.sqrt(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b))
    flat = _constant(a) & _constant(b)
    diff = a.mean(axis=0) - b.mean(axis=0)
    return np.divide(diff, se, out=np.zeros_like(diff), where=~flat & (se > 0))


def _mem_rank_sum(block: np.ndarray, mem: np.ndarray) -> np.ndarray:
    """Sum of the mem rows' average ranks in each column (ties share their mean rank).

    Works on the transpose so that every sort runs along contiguous memory; this is
    several times faster than scipy's rankdata on wide blocks.
    """
    rows = np.ascontiguousarray(block.T)  # [neurons, N]
    n = rows.shape[1]
    order = np.argsort(rows, axis=1)
    ordered = np.take_along_axis(rows, order, axis=1)
    position = np.arange(n)
    edge = np.ones((len(rows), 1), dtype=bool)
    new_value = ordered[:, 1:] != ordered[:, :-1]
    # Each sorted position's tie group runs from its first to its last position.
    first = np.maximum.accumulate(np.where(np.hstack([edge, new_value]), position, 0), axis=1)
    ends = np.where(np.hstack([new_value, edge]), position, n - 1)
    last = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    ranks = (first + last) / 2 + 1
    result: np.ndarray = (ranks * mem[order]).sum(axis=1)
    return result


@SCORERS.register("auroc")
@_blockwise
def auroc(block: np.ndarray, mem: np.ndarray) -> np.ndarray:
    # Mann-Whitney U from average ranks: ties count half, so a constant neuron gives 0.5.
    n_mem, n_gen = int(mem.sum()), int((~mem).sum())
    u = _mem_rank_sum(block, mem) - n_mem * (n_mem + 1) / 2
    result: np.ndarray = 2.0 * u / (n_mem * n_gen) - 1.0
    return result


def score(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Run the scorer registered as `name`; unknown names suggest the closest one."""
    return SCORERS.get(name)(x, y)
