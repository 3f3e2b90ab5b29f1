"""Behaviour probes: per-layer classifiers that predict mem vs gen from activations."""

from memgen.probe.probes import PROBES, fold_assignment, layer_accuracies, learning_curve

__all__ = ["PROBES", "fold_assignment", "layer_accuracies", "learning_curve"]
