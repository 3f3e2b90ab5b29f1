"""Control interventions: the same number of neurons and the same shift sizes, chosen blindly.

`random`: neurons drawn uniformly from all (layer, neuron) places outside the
selected set, each shifted by one of the selected |NMD| values (shuffled) with a
random sign. `low_correlation` (the stronger control reviewers asked for): the
neurons least correlated with the behaviour, shifted by the selected |NMD| sizes in
the direction of their own NMD, so the control pushes "the right way" with the same
force through neurons the ranking calls irrelevant.
"""

from __future__ import annotations

import numpy as np

from memgen.core.errors import MemgenError
from memgen.core.hooks import Intervention
from memgen.core.neuron_set import NeuronSet
from memgen.steering.api import Direction, shift_interventions


def control_interventions(
    kind: str,
    neuron_set: NeuronSet,
    nmd: np.ndarray,
    score: np.ndarray,
    alpha: float,
    toward: Direction,
    rng: np.random.Generator,
) -> list[Intervention]:
    """`kind` is "random" or "low_correlation"; `nmd` and `score` are [layers, width]."""
    n_layers, width = nmd.shape
    count = len(neuron_set.nmd)
    sizes = alpha * rng.permutation(np.abs(np.asarray(neuron_set.nmd, dtype=np.float64)))
    selected = np.asarray(neuron_set.layers) * width + np.asarray(neuron_set.neurons)
    sign = 1.0 if toward == "mem" else -1.0
    if kind == "random":
        pool = np.setdiff1d(np.arange(n_layers * width), selected)
        if len(pool) < count:
            raise MemgenError(
                f"the random control needs {count} unselected neurons, and only {len(pool)} "
                "are left; select at most half of them (top_n <= 0.5)"
            )
        flat = rng.choice(pool, size=count, replace=False)
        shifts = sizes * rng.choice([-1.0, 1.0], size=count)
    elif kind == "low_correlation":
        flat = np.argsort(np.abs(score).ravel(), kind="stable")[:count]
        own = np.sign(nmd.ravel()[flat])
        shifts = sign * sizes * np.where(own == 0, 1.0, own)
    else:
        raise ValueError(f"unknown control {kind!r}")
    layers, neurons = np.divmod(flat, width)
    return shift_interventions(neuron_set.site, layers, neurons, shifts)
