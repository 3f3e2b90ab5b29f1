"""Flipped pairs: near-identical prompts, one answered by memory and the other by the rule."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.config import BehaveConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import Example, Labelled
from memgen.core.reading import label_examples
from memgen.core.stats import wilson
from memgen.tasks.base import Task

log = logging.getLogger(__name__)
CHUNK = 256  # pairs generated per round: big batches, little overshoot past the target
# How sure mining must be that `min_flips` is out of reach before it gives up early.
GIVE_UP_CONFIDENCE = 0.99


@dataclass(frozen=True)
class PairSearch:
    flipped: list[tuple[Labelled, Labelled]]
    evaluated: int
    gave_up: bool = False  # stopped before max_pairs: min_flips was out of reach

    @property
    def flip_rate(self) -> float:
        return len(self.flipped) / self.evaluated if self.evaluated else 0.0


def is_flip(a: Labelled, b: Labelled) -> bool:
    return {a.label, b.label} == {"mem", "gen"}


def mine_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    stream: Iterator[tuple[Example, Example]],
    cfg: BehaveConfig,
    *,
    chat: bool,
    progress: bool = True,
) -> PairSearch:
    """Evaluate pairs until `target_flips` flips or `max_pairs` pairs have been evaluated."""
    flipped: list[tuple[Labelled, Labelled]] = []
    evaluated = 0
    bar = tqdm(total=cfg.target_flips, desc="flipped pairs", disable=None if progress else True)
    while len(flipped) < cfg.target_flips and evaluated < cfg.max_pairs:
        chunk = list(itertools.islice(stream, min(CHUNK, cfg.max_pairs - evaluated)))
        flat = [ex for pair in chunk for ex in pair]
        labelled = label_examples(model, tokenizer, task, flat, cfg, chat=chat)
        # Count pairs up to the one that reaches the target, so the flip rate is unbiased.
        for a, b in zip(labelled[::2], labelled[1::2], strict=True):
            evaluated += 1
            if is_flip(a, b):
                flipped.append((a, b))
                bar.update(1)
                if len(flipped) == cfg.target_flips:
                    break
        bar.set_postfix(evaluated=evaluated, rate=f"{len(flipped) / evaluated:.3f}")
        if out_of_reach(len(flipped), evaluated, cfg):
            bar.close()
            return PairSearch(flipped, evaluated, gave_up=True)
    bar.close()
    return PairSearch(flipped, evaluated)


def out_of_reach(flips: int, evaluated: int, cfg: BehaveConfig) -> bool:
    """Whether the pairs left, at the flip rate's upper bound (a two-sided
    `GIVE_UP_CONFIDENCE` Wilson interval's, checked after every round), would still not
    reach `min_flips`: a model that shows one behaviour (every test answer the rule's, say)
    has no twin to flip, and mining its `max_pairs` would be time lost."""
    left = cfg.max_pairs - evaluated  # none left: mining ended, it did not give up
    _, ceiling = wilson(flips, evaluated, GIVE_UP_CONFIDENCE)
    return left > 0 and flips < cfg.min_flips and flips + ceiling * left < cfg.min_flips


def require_flips(search: PairSearch, cfg: BehaveConfig) -> None:
    if len(search.flipped) < cfg.min_flips:
        stopped = " (stopped early: the rest could not reach it)" if search.gave_up else ""
        raise MemgenError(
            f"found {len(search.flipped)} flipped pairs in {search.evaluated} evaluated "
            f"(flip rate {search.flip_rate:.3%}), fewer than behave.min_flips={cfg.min_flips}"
            f"{stopped}; train a model whose test rates show both behaviours, or raise "
            "behave.max_pairs"
        )
