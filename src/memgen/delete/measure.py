"""What deleting a set of MLP neurons does to the model's own answers, on held-out prompts.

    held = HeldOut.build(model, tokenizer, test_answers, pair_prompts, train, chat, 400)
    bench = DeletionBench(model, tokenizer, held, {"mean": mean, "zero": zeros}, chat, spread)
    deleted = bench(neurons, "mean")   # a `Deleted`

A deletion sets the chosen neurons to fixed values (their mean over training prompts, or
zero) at every position, as Chang, Thomason & Jia's DEL does, and asks greedy decoding
again, teacher-forced (`memgen.localize.plant.recalled`: exact, one forward pass):

- `mem_kept`: of the held-out prompts the model answered by memory, the share it still
  does; `to_rule`: the share that now give the rule's answer instead;
- `gen_kept`: of those it answered by rule, the share it still does (the collateral);
- `train_kept`: of training prompts it answered as trained, the share it still does.

Held out means no prompt of a flipped pair (the selectors chose on those) is measured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.answers import greedy_writes
from memgen.core.errors import MemgenError
from memgen.core.examples import Behaviour, Example
from memgen.core.hooks import intervene
from memgen.core.rows import Deleted
from memgen.localize.plant import Neurons
from memgen.localize.test import usual_value_ablation


def _answering(example: Example, answer: str) -> Example:
    return dataclasses.replace(example, completion=answer)


def _answered(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, group: list[Example], chat: bool
) -> list[Example]:
    hits = greedy_writes(model, tokenizer, group, chat)
    return [ex for ex, hit in zip(group, hits, strict=True) if hit]


@dataclass(frozen=True)
class HeldOut:
    """The prompts a deletion is measured on, each carrying the answer it is checked for."""

    mem: list[Example]  # answered by memory: completion = the memorized answer
    as_rule: list[Example]  # the same prompts, completion = the rule's answer
    gen: list[Example]  # answered by the rule: completion = the rule's answer
    train: list[Example]  # training prompts answered as trained

    @classmethod
    def build(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        answers: Sequence[tuple[Example, Behaviour]],
        pair_prompts: set[str],
        train: Sequence[Example],
        chat: bool,
        n_prompts: int,
    ) -> HeldOut:
        """`behave`'s labelled test answers less the pairs' prompts, at most `n_prompts`
        of each behaviour, kept where the unablated model gives the same answer
        teacher-forced (the answer and then the end token: a ramble is not a recall)."""
        fresh = [(ex, label) for ex, label in answers if ex.prompt not in pair_prompts]
        mem = [_answering(ex, ex.mem_answer) for ex, label in fresh if label == "mem"]
        gen = [_answering(ex, ex.gen_answer) for ex, label in fresh if label == "gen"]
        mem, gen = mem[:n_prompts], gen[:n_prompts]  # test prompts are in random order
        kept = [_answered(model, tokenizer, group, chat) for group in (mem, gen, list(train))]
        if not kept[0] or not kept[1]:
            raise MemgenError(
                f"delete: {len(kept[0])} held-out prompts answered by memory and "
                f"{len(kept[1])} by rule; both are needed (raise data.n_test, or use a "
                "checkpoint that shows both behaviours)"
            )
        as_rule = [_answering(ex, ex.gen_answer) for ex in kept[0]]
        return cls(kept[0], as_rule, kept[1], kept[2])

    def of_memory(self, answer: str) -> HeldOut:
        """Only the memorized prompts whose memorized answer is `answer`."""
        rows = [i for i, ex in enumerate(self.mem) if ex.mem_answer == answer]
        return HeldOut(
            [self.mem[i] for i in rows], [self.as_rule[i] for i in rows], self.gen, self.train
        )


def _share(hits: np.ndarray) -> float:
    return float(hits.mean()) if len(hits) else 1.0


@dataclass(frozen=True)
class DeletionBench:
    """One model, its held-out prompts and the value each ablation sets a neuron to."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    held: HeldOut
    values: dict[str, np.ndarray]  # ablation ("mean", "zero") -> [L, W]
    chat: bool
    spread: np.ndarray  # [L, W]: activation sd x write norm, what deleting a neuron moves

    def __call__(self, neurons: Neurons, ablation: str) -> Deleted:
        """Set `neurons` to the ablation's values at every position; measure what is kept."""
        with intervene(self.model, usual_value_ablation(neurons, self.values[ablation])):
            shares = [
                _share(greedy_writes(self.model, self.tokenizer, group, self.chat))
                for group in (self.held.mem, self.held.as_rule, self.held.gen, self.held.train)
            ]
        return Deleted(
            mem_kept=shares[0], to_rule=shares[1], gen_kept=shares[2], train_kept=shares[3]
        )

    def memorized_kept(
        self, neurons: Neurons, ablation: str, memorized: Sequence[Example]
    ) -> np.ndarray:
        """Per prompt of `memorized`: still answered by memory with `neurons` deleted?"""
        with intervene(self.model, usual_value_ablation(neurons, self.values[ablation])):
            return greedy_writes(self.model, self.tokenizer, memorized, self.chat)
