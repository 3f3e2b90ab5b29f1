"""Neuron scorers: how strongly each neuron's activation separates mem rows from gen rows.

    from memgen.neurons.scores import SCORERS, score
    nmd = score("nmd", X, y)          # X [N, L, D] (or [N, F]), y [N] with 1 = mem, 0 = gen
    r = score("pearson", X, y)        # -> [L, D] (or [F])

Every scorer is signed so that a positive value leans memorization; selection ranks
by the absolute value. All of them are vectorised over neurons; the only Python loop
is over column blocks, which bounds memory when X is a memory-mapped record array.

- `nmd`: mean over mem rows minus mean over gen rows (the paper's NMD).
- `nmd_sd`: NMD over the neuron's standard deviation across all rows (comparable
  across layers whose activation norms differ).
- `pearson`: correlation of activation with the binary label (point-biserial);
  a constant neuron scores 0.
- `t`: Welch's t statistic (mem vs gen); a neuron constant in both groups scores 0.
- `auroc`: rank-based separation, returned as 2 * AUROC - 1 (the rank-biserial
  correlation) so that 0 is chance and the sign and |.| ranking match the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from memgen.core.errors import MemgenError
from memgen.core.registry import Registry

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
BlockScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]

SCORERS: Registry[Scorer] = Registry("neuron scorer")

# Float64 working memory per block (bytes); large enough that numpy, not Python, dominates.
_BLOCK_BYTES = 64 << 20
# Rows per float64 chunk of the one-pass moments (fastest of 64-1,200 at 1,200 x 512).
_ROWS = 128


def check_labels(y: np.ndarray, n_rows: int) -> np.ndarray:
    """The labels as a bool mask (True = mem); both behaviours must be present."""
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != n_rows:
        raise MemgenError(
            f"labels have shape {labels.shape} but the activations have {n_rows} rows; "
            "re-run `memgen record`"
        )
    if not ((labels == 0) | (labels == 1)).all():
        raise MemgenError("labels must be 1 (mem) or 0 (gen); re-run `memgen record`")
    mask = labels.astype(bool)
    if mask.all() or not mask.any():
        raise MemgenError(
            "the activations hold only one behaviour; mine flipped pairs with `memgen behave`"
        )
    return mask


def _blocks(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[slice]]:
    """X as [N, F], the labels as a mask, and column blocks that bound float64 memory."""
    if x.ndim < 2:
        raise MemgenError(f"activations must be [rows, ...neurons], got shape {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    mask = check_labels(y, flat.shape[0])
    n_rows, n_features = flat.shape
    step = max(1, _BLOCK_BYTES // (8 * max(n_rows, 1)))
    return flat, mask, [slice(a, a + step) for a in range(0, n_features, step)]


def _blockwise(fn: BlockScorer) -> Scorer:
    """Lift a scorer of a float64 [N, f] block to X [N, ...] -> scores [...]."""

    @functools.wraps(fn)
    def scorer(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        flat, mask, blocks = _blocks(x, y)
        out = np.empty(flat.shape[1], dtype=np.float64)
        for cols in blocks:
            out[cols] = fn(np.asarray(flat[:, cols], dtype=np.float64), mask)
        return out.reshape(x.shape[1:])

    return scorer


@dataclass(frozen=True)
class Moments:
    """Per class (mem, gen) and column: the count, the mean and the summed squared
    deviations (M2), which is exactly 0 where the class's column is constant."""

    n: np.ndarray  # [2, 1]
    mean: np.ndarray  # [2, f]
    m2: np.ndarray  # [2, f]

    def pooled_m2(self) -> np.ndarray:
        """M2 over both classes together (Chan et al.'s parallel variance)."""
        (n_mem,), (n_gen,) = self.n
        diff = self.mean[0] - self.mean[1]
        pooled: np.ndarray = self.m2.sum(axis=0) + diff * diff * n_mem * n_gen / (n_mem + n_gen)
        return pooled


def _moments(block: np.ndarray, mask: np.ndarray) -> Moments:
    """Each class's count, mean and M2 from its sums and sums of squares, `_ROWS` rows at a time.

    Each class's rows are gathered a chunk at a time, copied to float64 and shifted, in
    place, by the class's first row, then summed down the rows. The shift keeps the sums
    of squares free of cancellation where a column's mean is large next to its spread,
    and makes a constant column's M2 exactly zero, without centred copies; chunks small
    enough to stay in cache make the gather and the float64 copy nearly free. The column
    sums are products with a vector of ones: BLAS sums a chunk's rows faster than
    `sum(axis=0)` (20% warm, 5-8% cold at 1,200 x 512; docs/benchmarks.md).
    """
    members = [np.flatnonzero(mask), np.flatnonzero(~mask)]  # mem rows, gen rows
    shifts = np.asarray(block[[rows[0] for rows in members]], dtype=np.float64)  # [2, f]
    total = np.zeros_like(shifts)
    squares = np.zeros_like(shifts)
    ones = np.ones(_ROWS)
    for c, rows in enumerate(members):
        for start in range(0, len(rows), _ROWS):
            chunk = np.asarray(block[rows[start : start + _ROWS]], dtype=np.float64)
            chunk -= shifts[c]
            sum_rows = ones[: len(chunk)]
            total[c] += sum_rows @ chunk
            chunk *= chunk
            squares[c] += sum_rows @ chunk
    n = np.array([[len(rows)] for rows in members], dtype=np.float64)
    return Moments(n, shifts + total / n, np.maximum(squares - total * total / n, 0.0))


MomentScorer = Callable[[Moments], np.ndarray]


def _from_moments(fn: MomentScorer) -> Scorer:
    """Lift a scorer of class moments to X [N, ...] -> scores [...]."""

    @functools.wraps(fn)
    def scorer(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        flat, mask, blocks = _blocks(x, y)
        out = np.empty(flat.shape[1], dtype=np.float64)
        for cols in blocks:
            out[cols] = fn(_moments(flat[:, cols], mask))
        return out.reshape(x.shape[1:])

    return scorer


@SCORERS.register("nmd")
@_from_moments
def nmd(m: Moments) -> np.ndarray:
    result: np.ndarray = m.mean[0] - m.mean[1]
    return result


@SCORERS.register("pearson")
@_from_moments
def pearson(m: Moments) -> np.ndarray:
    # Point-biserial r = d sqrt(n1 n0 / (N M2)), M2 pooled from the classes'; a constant
    # neuron (M2 = 0) scores 0.
    (n_mem,), (n_gen,) = m.n
    diff, m2 = m.mean[0] - m.mean[1], m.pooled_m2()
    total = n_mem + n_gen
    scale = np.sqrt(m2 * total / (n_mem * n_gen))
    r = np.divide(diff, scale, out=np.zeros_like(diff), where=m2 > 0)
    return np.clip(r, -1.0, 1.0)


@SCORERS.register("nmd_sd")
@_from_moments
def nmd_sd(m: Moments) -> np.ndarray:
    # NMD in units of the neuron's standard deviation over all rows (ddof 1): raw NMD
    # grows with a layer's activation norm, this does not; a constant neuron scores 0.
    diff, m2 = m.mean[0] - m.mean[1], m.pooled_m2()
    sd = np.sqrt(m2 / max(m.n.sum() - 1, 1))
    return np.divide(diff, sd, out=np.zeros_like(diff), where=m2 > 0)


@SCORERS.register("t")
@_from_moments
def welch_t(m: Moments) -> np.ndarray:
    if (m.n < 2).any():
        raise MemgenError("Welch t needs at least two rows of each behaviour; mine more pairs")
    se = np.sqrt((m.m2 / (m.n - 1) / m.n).sum(axis=0))
    diff = m.mean[0] - m.mean[1]
    return np.divide(diff, se, out=np.zeros_like(diff), where=se > 0)


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
