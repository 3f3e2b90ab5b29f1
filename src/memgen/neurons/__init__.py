"""Behaviour neurons: score neurons by how they separate mem from gen, select, save, compare."""

from memgen.core.config import set_name
from memgen.core.neuron_set import NeuronSet
from memgen.neurons.scores import SCORERS, score
from memgen.neurons.selection import layer_share, select_top

__all__ = ["SCORERS", "NeuronSet", "layer_share", "score", "select_top", "set_name"]
