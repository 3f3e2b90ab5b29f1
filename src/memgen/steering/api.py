"""The public steering API: a context manager around any Hugging Face model.

    import memgen
    with memgen.steer(model, memgen.load_steering("runs/cipher/steer/best/mem_to_gen")):
        model.generate(...)                    # a steering `memgen steer` chose and saved
    neurons = memgen.NeuronSet.load("runs/color-seed0/neurons/top5")
    with memgen.steer(model, neurons, alpha=3, toward="gen"):
        model.generate(...)                    # the paper's: alpha x NMD on the set

Toward memorization adds alpha x NMD_j to each selected neuron j (NMD = mean over
mem minus mean over gen); toward generalization subtracts it. The shift is applied
at the last position of every forward pass: the prompt's last token, then each
generated token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from memgen.core.errors import MemgenError
from memgen.core.hooks import intervene
from memgen.core.neuron_set import NeuronSet
from memgen.steering.methods import Toward, sign_of
from memgen.steering.saved import Steering, load_steering

__all__ = ["Steering", "load_steering", "nmd_steering", "steer"]


def nmd_steering(neuron_set: NeuronSet, alpha: float, toward: Toward) -> Steering:
    """The paper's steering: +-alpha x NMD on the set's neurons, at the last position."""
    shift = np.zeros((neuron_set.n_layers, neuron_set.width))
    shift[neuron_set.layers, neuron_set.neurons] = (
        sign_of(toward) * alpha * np.asarray(neuron_set.nmd, dtype=np.float64)
    )
    meta = {"method": "nmd", "size": alpha, "toward": toward, "top_n": neuron_set.top_n}
    return Steering(neuron_set.model, neuron_set.site, "last", shift, meta)


@contextmanager
def steer(
    model: torch.nn.Module,
    steering: Steering | NeuronSet,
    alpha: float | None = None,
    toward: Toward | None = None,
) -> Iterator[torch.nn.Module]:
    """Steer `model` (plain or PEFT-wrapped) inside the block; all hooks go on exit.

    Give a saved `Steering` alone, or a `NeuronSet` with `alpha` and `toward`.
    """
    if isinstance(steering, NeuronSet):
        if alpha is None or toward is None:
            raise MemgenError("steering a neuron set needs alpha= and toward= ('gen' or 'mem')")
        steering = nmd_steering(steering, alpha, toward)
    elif alpha is not None or toward is not None:
        raise MemgenError("a saved steering carries its own size and direction; drop alpha/toward")
    steering.check_compatible(model)
    with intervene(model, steering.interventions()):
        yield model
