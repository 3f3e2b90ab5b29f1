"""Steering methods: each turns a selection and the recorded activations into shifts.

    from memgen.steering.methods import METHODS, SiteStats
    stats = SiteStats.from_record(read_record(path), "resid")
    method = METHODS.get("nmd_sd")
    shifts = method.sparse(stats, masks, size=1.0, toward="gen", fit=None)   # [K, L, W]

A *sparse* method moves the neurons of a mask (a top-N% set); its matched control is
the same method applied to random neurons, as many per layer, at the same norm per layer
(`Method.matched`). A *dense* method moves
a whole layer along one direction; its matched control is a random direction given the
same treatment. Sizes (`size`) are in each method's own unit:

- `nmd`: the paper's: +-alpha x NMD on the selected neurons (NMD = mean over mem rows
  minus mean over gen rows of the flipped pairs).
- `nmd_sd`: the same direction, scaled so the median selected neuron moves `size` of
  its own standard deviations: one grid fits every model.
- `fitted`: per-neuron values fitted by gradient (model frozen) to make the target
  behaviour's answer, up to where it parts from the source behaviour's
  (`memgen.core.forks`), as a shift at every position ("last") acts; the same values are
  also tried at "prompt". `size` is the L2 budget in neuron sds, or with
  `steer.budget_unit: norm` the shift's norm as a share of each layer's mean activation
  norm (summed in quadrature over layers).
- `fitted_layer`: the fitted method on every neuron of one layer (a learned steering
  vector, as `memgen bound` fits); `size` is the budget. Its matched control is a random
  direction of the same norm at that layer: random neurons of a whole layer are the layer.
- `mean_diff`: activation addition (CAA / ActAdd): alpha x the layer's whole NMD vector.
- `probe`: ITI's direction: the layer's logistic-regression probe direction, times
  alpha x the activations' standard deviation along it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression

from memgen.core.errors import MemgenError
from memgen.core.recorded import Recorded
from memgen.core.registry import Registry
from memgen.core.sites import SiteKind
from memgen.neurons.scores import score as neuron_score

Toward = Literal["gen", "mem"]
# A size for every shift, or one for all of them.
Size = float | np.ndarray
# (masks [K, L, W], budgets, toward) -> fitted shifts [K, L, W]
Fit = Callable[[np.ndarray, Size, Toward], np.ndarray]


def sign_of(toward: Toward) -> float:
    """NMD leans memorization, so toward mem adds it and toward gen subtracts it."""
    if toward not in ("gen", "mem"):
        raise MemgenError(f"toward={toward!r}: steer toward 'gen' or 'mem'")
    return 1.0 if toward == "mem" else -1.0


def activation_scale(activations: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron standard deviation [L, W] and mean vector norm per layer [L], in chunks.

    `activations` is the record stage's [N, L, W] memory map; chunks keep a large model's
    recording from being copied into memory at once.
    """
    n = activations.shape[0]
    total = np.zeros(activations.shape[1:])
    squares = np.zeros(activations.shape[1:])
    norms = np.zeros(activations.shape[1])
    for start in range(0, n, chunk):
        x = np.asarray(activations[start : start + chunk], dtype=np.float64)
        total += x.sum(axis=0)
        squares += (x * x).sum(axis=0)
        norms += np.linalg.norm(x, axis=2).sum(axis=0)
    mean = total / n
    sd = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
    return sd, norms / n


@dataclass(frozen=True, eq=False)
class SiteStats:
    """One site's recorded flipped-pair activations, summarised for steering."""

    kind: SiteKind
    activations: np.ndarray  # [N, L, W], memory-mapped
    labels: np.ndarray  # [N], 1 = mem
    nmd: np.ndarray  # [L, W]
    sd: np.ndarray  # [L, W]
    mean_norm: np.ndarray  # [L]

    @classmethod
    def from_record(cls, recorded: Recorded, kind: SiteKind) -> SiteStats:
        x = recorded.activations(kind)
        sd, mean_norm = activation_scale(x)
        nmd = neuron_score("nmd", x, recorded.labels)
        return cls(kind, x, recorded.labels, nmd, sd, mean_norm)

    @property
    def shape(self) -> tuple[int, int]:
        return self.nmd.shape  # type: ignore[return-value]

    def unit(self) -> np.ndarray:
        """Each neuron's sd, with a dead neuron's 0 replaced so nothing divides by it."""
        return _zeros_to_median(self.sd)

    def layer_unit(self) -> np.ndarray:
        """Each layer's mean neuron sd, for every neuron of the layer: the same push in
        activation units whatever a neuron's own spread (a near-dead neuron, in its own
        sd, gets a push as small as its spread)."""
        return np.broadcast_to(self.unit().mean(axis=1, keepdims=True), self.shape).copy()

    def norm_metric(self) -> np.ndarray:
        """[L, W]: one sd of each neuron as a share of its layer's mean activation norm, so a
        fitted budget counts the push (`shift_size`'s `relative_norm`) instead of sds: the
        same budget moves every model's layers as far, however spread its neurons are."""
        metric: np.ndarray = self.unit() / _zeros_to_median(self.mean_norm)[:, None]
        return metric

    def write_unit(self, writes: np.ndarray) -> np.ndarray:
        """`layer_unit` over each neuron's write norm (`memgen.core.sites.write_norms`)
        relative to its layer's mean: every neuron of a layer moves the residual stream
        as far per unit, and the layer's average neuron as far as in `layer_unit`."""
        mean = writes.mean(axis=1, keepdims=True)
        return self.layer_unit() * mean / np.where(writes > 0, writes, mean)


def _zeros_to_median(values: np.ndarray) -> np.ndarray:
    """`values` with each 0 (a dead neuron or layer) replaced by the median of the positive
    ones (1 if none is), so a unit or norm made of them can be divided by."""
    positive = values[values > 0]
    floor = float(np.median(positive)) if positive.size else 1.0
    floored: np.ndarray = np.where(values > 0, values, floor)
    return floored


Sparse = Callable[[SiteStats, np.ndarray, Size, Toward, Fit | None], np.ndarray]
Direction = Callable[[SiteStats, int, np.random.Generator | None], np.ndarray]


@dataclass(frozen=True)
class Method:
    """A steering method: `sparse` (masks -> shifts) or `direction` (layer -> vector).

    A sparse method with `whole_layers` is given one mask per layer, each holding every
    neuron of that layer, instead of the neuron sets.
    """

    name: str
    grid: str  # the steer config list that holds its sizes
    sparse: Sparse | None = None
    direction: Direction | None = None
    whole_layers: bool = False

    @property
    def dense(self) -> bool:
        return self.direction is not None

    @property
    def fitted(self) -> bool:
        """Its shifts are fitted to a budget, so a control fitted alike pushes as hard."""
        return self.sparse is _fitted

    @property
    def controlled_by_directions(self) -> bool:
        """Its matched control is a random direction per layer, not random neurons."""
        return self.dense or self.whole_layers

    @property
    def control_kind(self) -> str:
        """What `matched` gives, so no row claims more than its control tests."""
        if self.controlled_by_directions:
            size = "size" if self.dense else "norm"
            return f"random direction at the layer, same {size}, not fitted"
        if self.fitted:
            return "random neurons, same count per layer, same treatment"
        return "random neurons, same count per layer, same treatment at the same norm per layer"

    def matched(
        self,
        stats: SiteStats,
        chosen: np.ndarray,
        mask: np.ndarray | None,
        size: float,
        toward: Toward,
        draws: int,
        rng: np.random.Generator,
        fit: Fit | None = None,
    ) -> np.ndarray:
        """[draws, L, W]: the treatment that made shift `chosen` [L, W] (of neuron set
        `mask`, at `size`) given to random neurons or directions.

        A random neuron's own NMD is smaller than a selected one's, so at the same alpha
        `nmd` would push less through random neurons than through the selection (and
        `nmd_sd`, calibrated on that smaller NMD, by another amount): their controls are
        rescaled to `chosen`'s norm in each layer, and the comparison asks which neurons,
        not how hard.
        """
        if self.dense:
            layer = int(np.flatnonzero(np.abs(chosen).sum(axis=1))[0])
            return self.dense_shifts(stats, [layer] * draws, size, toward, rng)
        if self.whole_layers:  # random neurons of a whole layer are the whole layer
            return random_like(chosen, draws, rng)
        assert self.sparse is not None and mask is not None
        shifts = self.sparse(stats, matched_masks(mask, draws, rng), size, toward, fit)
        return shifts if self.fitted else same_norm_per_layer(shifts, chosen)

    def dense_shifts(
        self,
        stats: SiteStats,
        layers: list[int],
        size: float,
        toward: Toward,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """[len(layers), L, W]: each layer's direction (random ones when `rng` is given)."""
        assert self.direction is not None
        shifts = np.zeros((len(layers), *stats.shape))
        for k, layer in enumerate(layers):
            shifts[k, layer] = sign_of(toward) * size * self.direction(stats, layer, rng)
        return shifts


METHODS: Registry[Method] = Registry("steering method")


def _per_shift(size: Size, count: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(size, dtype=np.float64), (count,)).reshape(-1, 1, 1)


def _nmd(
    stats: SiteStats, masks: np.ndarray, size: Size, toward: Toward, fit: Fit | None
) -> np.ndarray:
    shifts: np.ndarray = sign_of(toward) * _per_shift(size, len(masks)) * stats.nmd[None] * masks
    return shifts


def _nmd_sd(
    stats: SiteStats, masks: np.ndarray, size: Size, toward: Toward, fit: Fit | None
) -> np.ndarray:
    shifts = _nmd(stats, masks, size, toward, None)
    ratio = np.abs(stats.nmd) / stats.unit()
    for k, mask in enumerate(masks.astype(bool)):
        median = float(np.median(ratio[mask])) if mask.any() else 0.0
        shifts[k] *= 1.0 / median if median > 0 else 0.0
    return shifts


def _fitted(
    stats: SiteStats, masks: np.ndarray, size: Size, toward: Toward, fit: Fit | None
) -> np.ndarray:
    if fit is None:
        raise MemgenError("the fitted method needs prompts to fit on")
    return fit(masks, size, toward)


def _random_unit(width: int, rng: np.random.Generator) -> np.ndarray:
    vector = rng.normal(size=width)
    unit: np.ndarray = vector / np.linalg.norm(vector)
    return unit


def _mean_diff(stats: SiteStats, layer: int, rng: np.random.Generator | None) -> np.ndarray:
    vector = stats.nmd[layer]
    if rng is None:
        return vector
    return _random_unit(len(vector), rng) * float(np.linalg.norm(vector))


def _probe(stats: SiteStats, layer: int, rng: np.random.Generator | None) -> np.ndarray:
    x = np.asarray(stats.activations[:, layer], dtype=np.float64)
    unit = stats.unit()[layer]
    if rng is None:
        # On standardised activations, so every neuron is penalised alike.
        probe = LogisticRegression(C=1.0, max_iter=2000).fit((x - x.mean(0)) / unit, stats.labels)
        raw = probe.coef_[0] / unit  # the same direction in activation space
        direction = raw / np.linalg.norm(raw)
    else:
        direction = _random_unit(x.shape[1], rng)
    spread: np.ndarray = direction * float(np.std(x @ direction))
    return spread


METHODS.register("nmd")(Method("nmd", "alphas", sparse=_nmd))
METHODS.register("nmd_sd")(Method("nmd_sd", "sd_alphas", sparse=_nmd_sd))
METHODS.register("fitted")(Method("fitted", "budgets", sparse=_fitted))
METHODS.register("fitted_layer")(
    Method("fitted_layer", "budgets", sparse=_fitted, whole_layers=True)
)
METHODS.register("mean_diff")(Method("mean_diff", "dense_alphas", direction=_mean_diff))
METHODS.register("probe")(Method("probe", "dense_alphas", direction=_probe))


def layer_masks(shape: tuple[int, int]) -> np.ndarray:
    """[L, L, W]: mask l holds every neuron of layer l."""
    layers, width = shape
    masks = np.zeros((layers, layers, width), dtype=bool)
    masks[np.arange(layers), np.arange(layers)] = True
    return masks


def random_like(shift: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, L, W]: random directions with `shift`'s norm in each of its layers."""
    out = np.zeros((draws, *shift.shape))
    for layer in np.flatnonzero(np.abs(shift).sum(axis=1)):
        norm = float(np.linalg.norm(shift[layer]))
        for d in range(draws):
            out[d, layer] = _random_unit(shift.shape[1], rng) * norm
    return out


def same_norm_per_layer(shifts: np.ndarray, like: np.ndarray) -> np.ndarray:
    """[K, L, W] `shifts`, each rescaled to `like`'s [L, W] L2 norm in every layer (a layer
    where a shift is zero stays zero)."""
    have = np.linalg.norm(shifts, axis=-1, keepdims=True)  # [K, L, 1]
    want = np.linalg.norm(like, axis=-1, keepdims=True)[None]  # [1, L, 1]
    scale = np.divide(want, have, out=np.zeros_like(have), where=have > 0)
    rescaled: np.ndarray = shifts * scale
    return rescaled


def matched_masks(mask: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, L, W]: random neurons, as many per layer as `mask` has, outside it if possible."""
    out = np.zeros((draws, *mask.shape), dtype=bool)
    for layer, row in enumerate(mask.astype(bool)):
        count = int(row.sum())
        if not count:
            continue
        pool = np.flatnonzero(~row)
        if len(pool) < count:  # a layer more than half selected: draw from all of it
            pool = np.arange(len(row))
        for d in range(draws):
            out[d, layer, rng.choice(pool, count, replace=False)] = True
    return out


def paper_control(
    kind: str,
    shift: np.ndarray,
    score: np.ndarray,
    nmd: np.ndarray,
    toward: Toward,
    rng: np.random.Generator,
) -> np.ndarray:
    """The paper's controls for a sparse shift [L, W], with its sizes, blindly placed.

    `random`: neurons drawn from all layers outside the selection, each given one of the
    selected shifts' sizes (shuffled) with a random sign. `low_correlation`: the neurons
    least correlated with the behaviour, given those sizes in the direction of their own
    NMD, so the control pushes the right way with the same force through neurons the
    ranking calls irrelevant.
    """
    selected = np.flatnonzero(shift.ravel())
    sizes = rng.permutation(np.abs(shift.ravel()[selected]))
    count = len(selected)
    if kind == "random":
        pool = np.setdiff1d(np.arange(shift.size), selected)
        if len(pool) < count:
            raise MemgenError(
                f"the random control needs {count} unselected neurons, and only {len(pool)} "
                "are left; select at most half of them (top_n <= 0.5)"
            )
        flat = rng.choice(pool, size=count, replace=False)
        values = sizes * rng.choice([-1.0, 1.0], size=count)
    elif kind == "low_correlation":
        flat = np.argsort(np.abs(score).ravel(), kind="stable")[:count]
        own = np.sign(nmd.ravel()[flat])
        values = sign_of(toward) * sizes * np.where(own == 0, 1.0, own)
    else:
        raise MemgenError(f"unknown control {kind!r} (random, low_correlation)")
    control = np.zeros(shift.size)
    control[flat] = values
    return control.reshape(shift.shape)


def shift_size(shift: np.ndarray, stats: SiteStats) -> dict[str, float]:
    """How hard a shift [L, W] pushes, against the recorded activations' spread and size.

    `sd`: the median moved neuron's shift in units of its own standard deviation.
    `relative_norm`: the largest, over layers, of the shift's norm over the mean norm of
    that layer's activation vector. The same alpha can be a nudge for one model and a
    shove that breaks another; these two numbers say which.
    """
    moved = shift != 0
    in_sd = np.abs(shift[moved]) / stats.unit()[moved]
    norms = np.linalg.norm(shift, axis=1)
    relative = [
        float(norms[layer] / stats.mean_norm[layer])
        for layer in np.flatnonzero(norms)
        if stats.mean_norm[layer] > 0
    ]
    return {
        "sd": float(np.median(in_sd)) if in_sd.size else 0.0,
        "relative_norm": max(relative, default=0.0),
    }
