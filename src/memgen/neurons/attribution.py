"""Attribution patching on flipped pairs: a causal score per neuron.

    scores = attribution(x, grads, labels, pair_ids)          # [n_layers, width]
    scores = site_score("attribution", recorded, "mlp")      # or any registry scorer

Patching a neuron's activation from a pair's mem member into its gen member changes the
answer margin (mem logit minus gen logit, `memgen.record.gradients`) by about
(a_mem - a_gen) x d margin / d a at the gen member, to first order; patching the other
way changes it by about -(a_mem - a_gen) x d margin / d a at the mem member. The score
averages both directions' estimates of the move toward memory over the pairs:
(a_mem - a_gen) x (g_mem + g_gen) / 2. Unlike NMD or |r|, it asks the model what its
answer depends on; ranked by |score|, the top-N% are the neurons whose activation
difference moves the answer most (Nanda 2023; Syed et al. 2023, "attribution patching").
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from memgen.core.config import MaskMethod
from memgen.core.errors import MemgenError
from memgen.core.recorded import CAUSAL_FIX, Recorded, pair_rows
from memgen.neurons.scores import score


def attribution(
    x: np.ndarray, grads: np.ndarray, labels: np.ndarray, pair_ids: np.ndarray
) -> np.ndarray:
    """Mean over pairs of (a_mem - a_gen) (g_mem + g_gen) / 2, per neuron [...]."""
    if x.shape != grads.shape or len(labels) != len(x) or len(pair_ids) != len(x):
        raise MemgenError(
            f"activations {x.shape}, gradients {grads.shape}, {len(labels)} labels and "
            f"{len(pair_ids)} pair ids do not match; re-run `memgen record`"
        )
    mem, gen = pair_rows(np.asarray(labels), np.asarray(pair_ids))
    total = np.zeros(x.shape[1:], dtype=np.float64)
    for start in range(0, len(mem), 256):  # float64 in blocks of pairs, not the whole record
        m, g = mem[start : start + 256], gen[start : start + 256]
        change = np.asarray(x[m], np.float64) - np.asarray(x[g], np.float64)
        slope = (np.asarray(grads[m], np.float64) + np.asarray(grads[g], np.float64)) / 2
        total += (change * slope).sum(axis=0)
    result: np.ndarray = total / len(mem)
    return result


MASKS = get_args(MaskMethod)  # learned masks: one-signed gate scores


def site_score(
    scorer: str, recorded: Recorded, site: str, rows: np.ndarray | None = None
) -> np.ndarray:
    """`scorer`'s [n_layers, width] map at `site`: "attribution" from the recorded answer
    gradients, "patching", "hardconcrete" and "slimming" from the maps `memgen record`
    made, any other name from the scorer registry on the activations and labels.

    `rows`: score on these recorded rows only (whole pairs, for attribution). A learned
    mask's scores are shifted to be non-negative, so the top by |score| are its most open
    gates (before 2026-12-06 late, `delete` and `specificity` took its most closed ones).
    """
    if scorer in CAUSAL_FIX:  # made by `memgen record` with the model, over its own pairs
        if rows is not None:
            raise MemgenError(f"{scorer} is scored on all the record's pairs, not on a subset")
        scores = recorded.causal_scores(scorer, site)
        if scorer in MASKS:
            # A gate's score is one-signed (higher: ablating the neuron moves answers to the
            # rule; most gates end closed, below their start). Selection ranks by |score|,
            # which would pick the most firmly closed gates: shift so it ranks by value.
            return scores - scores.min()
        return scores
    every = slice(None) if rows is None else rows
    x, labels = recorded.activations(site)[every], recorded.labels[every]
    if scorer == "attribution":
        grads = recorded.margin_gradients(site)[every]
        return attribution(x, grads, labels, recorded.pair_ids[every])
    return score(scorer, x, labels)
