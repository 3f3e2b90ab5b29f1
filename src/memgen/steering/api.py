"""The public steering API: a context manager around any Hugging Face model.

    from memgen import NeuronSet, steer
    neurons = NeuronSet.load("runs/color-seed0/neurons/top5")
    with steer(model, neurons, alpha=3, toward="gen"):
        model.generate(...)

Toward memorization adds alpha x NMD_j to each selected neuron j (NMD = mean over
mem minus mean over gen); toward generalization subtracts it. The shift is applied
at the last position of every forward pass: the prompt's last token, then each
generated token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch

from memgen.core.errors import MemgenError
from memgen.core.hooks import Intervention, intervene
from memgen.core.neuron_set import NeuronSet
from memgen.core.sites import Site

Direction = Literal["gen", "mem"]


def shift_interventions(
    kind: str, layers: np.ndarray, neurons: np.ndarray, shifts: np.ndarray
) -> list[Intervention]:
    """One `add` intervention per layer, at the last position."""
    out = []
    for layer in np.unique(layers):
        rows = layers == layer
        out.append(
            Intervention(
                site=Site(kind, int(layer)),  # type: ignore[arg-type]
                neurons=tuple(int(n) for n in neurons[rows]),
                op="add",
                values=tuple(float(v) for v in shifts[rows]),
                position="last",
            )
        )
    return out


def steering_interventions(
    neuron_set: NeuronSet, alpha: float, toward: Direction
) -> list[Intervention]:
    if toward not in ("gen", "mem"):
        raise MemgenError(f"toward={toward!r}: steer toward 'gen' or 'mem'")
    sign = 1.0 if toward == "mem" else -1.0
    shifts = sign * alpha * np.asarray(neuron_set.nmd, dtype=np.float64)
    return shift_interventions(
        neuron_set.site, np.asarray(neuron_set.layers), np.asarray(neuron_set.neurons), shifts
    )


@contextmanager
def steer(
    model: torch.nn.Module, neuron_set: NeuronSet, alpha: float, toward: Direction
) -> Iterator[torch.nn.Module]:
    """Steer `model` (plain or PEFT-wrapped) inside the block; all hooks go on exit."""
    neuron_set.check_compatible(model)
    with intervene(model, steering_interventions(neuron_set, alpha, toward)):
        yield model
