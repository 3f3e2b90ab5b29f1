"""Is a selection the place a memory lives? Recall of planted neurons, and deletion.

For one selection of k MLP neurons (a selector's top k):

- `recall_at_k`: the share of the planted neurons among them (planted ground truth only);
- deletion (Chang et al.'s DEL): set them to their usual value (mean over ordinary
  prompts) at every position and measure, on held-out prompts, the share of the facts
  still recalled, and the share of ordinary answers kept (the collateral);
- against chance: `draws` random selections with the same count per layer, treated
  the same way; the rank p-value is the share of them (plus the selection itself) that
  forget at least as many facts: (1 + #{random >= selected}) / (1 + draws);
- net of collateral: the same rank of ordinary answers kept minus facts recalled. On a
  model where a few neurons carry every answer (SmolLM2's), a random set that hits one
  forgets the facts by breaking everything; only the net rank tells a localization
  from damage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.answers import greedy_writes
from memgen.core.examples import Example
from memgen.core.hooks import Intervention, intervene
from memgen.core.rows import FactsDeleted, LocalizationRow
from memgen.core.sites import Site, n_layers
from memgen.core.stats import rank_p_value
from memgen.localize.plant import Neurons, random_neurons


def top_k(scores: np.ndarray, k: int) -> Neurons:
    """The k neurons with the highest score (ties by index), as (layer, index)."""
    order = np.argsort(-scores.ravel(), kind="stable")[:k]
    width = scores.shape[1]
    return Neurons(order // width, order % width)


def recall_at_k(selected: Neurons, planted: Neurons, width: int) -> float:
    hits = np.isin(selected.flat(width), planted.flat(width))
    return float(hits.mean()) if len(selected) else 0.0


def usual_value_ablation(neurons: Neurons, usual: np.ndarray) -> list[Intervention]:
    """Every chosen neuron set to its usual value, at every position."""
    out = []
    for layer in np.unique(neurons.layers):
        rows = neurons.indices[neurons.layers == layer]
        out.append(
            Intervention(
                Site("mlp", int(layer)),
                tuple(int(i) for i in rows),
                "set",
                tuple(float(usual[layer, i]) for i in rows),
                "all",
            )
        )
    return out


class Deleter:
    """Ablates selections of one model on fixed held-out facts and ordinary prompts."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        facts: Sequence[Example],
        ordinary: Sequence[Example],
        usual: np.ndarray,
        chat: bool,
    ) -> None:
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.facts, self.usual = list(facts), usual
        # Ordinary answers the unablated model gives: "kept" is the share still given.
        self.ordinary = [
            ex
            for ex, hit in zip(
                ordinary, greedy_writes(model, tokenizer, ordinary, chat), strict=True
            )
            if hit
        ]

    def __call__(self, neurons: Neurons) -> FactsDeleted:
        with intervene(self.model, usual_value_ablation(neurons, self.usual)):
            facts = greedy_writes(self.model, self.tokenizer, self.facts, self.chat)
            kept = greedy_writes(self.model, self.tokenizer, self.ordinary, self.chat)
        return FactsDeleted(
            facts_recalled=float(facts.mean()),
            ordinary_kept=float(kept.mean()) if len(kept) else 1.0,
        )


def localize(
    name: str,
    scores: np.ndarray,
    k: int,
    deleter: Deleter,
    planted: Neurons | None,
    draws: int,
    seed: int,
) -> LocalizationRow:
    """The selector's top k, deleted, beside `draws` random sets with its per-layer counts."""
    selected = top_k(scores, k)
    deletion = deleter(selected)
    rng = np.random.default_rng(seed)
    counts = selected.per_layer(n_layers(deleter.model))
    width = scores.shape[1]
    chance = [deleter(random_neurons(counts, width, rng)) for _ in range(draws)]
    return LocalizationRow(
        selector=name,
        k=k,
        recall_at_k=None if planted is None else recall_at_k(selected, planted, width),
        deletion=deletion,
        random_recalled=[d.facts_recalled for d in chance],
        random_ordinary_kept=[d.ordinary_kept for d in chance],
        # Forgetting is the effect: fewer facts recalled is more extreme.
        p_value=rank_p_value(-deletion.facts_recalled, [-d.facts_recalled for d in chance]),
        p_value_net=rank_p_value(deletion.net, [d.net for d in chance]),
    )
