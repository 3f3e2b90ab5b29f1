"""Flip mining's counts, and the labels the side-effect check compares against."""

from __future__ import annotations

import itertools

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.behave.pairs import mine_pairs, require_flips
from memgen.core.config import BehaveConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.tasks import make_task
from memgen.tasks.color import ColorTask


class FlipsEvery(ColorTask):
    """The color task with a labeller that makes every `n`-th pair flip (its first member
    called mem, the second gen; members are labelled in order) and calls every other
    answer gen, whatever the model answers."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self._calls = n, itertools.count()

    def label(self, example: Example, output: str):  # type: ignore[no-untyped-def]
        call = next(self._calls)
        return "mem" if call % 2 == 0 and (call // 2) % self.n == 0 else "gen"


def test_the_flip_rate_counts_pairs_up_to_the_target(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    task = FlipsEvery(1)
    cfg = BehaveConfig(target_flips=10, min_flips=2, max_pairs=1000)
    search = mine_pairs(model, tokenizer, task, task.pairs(seed=0), cfg, chat=False,
                        progress=False)  # fmt: skip
    assert (len(search.flipped), search.evaluated, search.flip_rate) == (10, 10, 1.0)


@pytest.mark.parametrize(
    ("n", "max_pairs", "evaluated", "gave_up"),
    [(10**9, 600, 256, True), (10, 600, 391, False), (10**9, 100, 100, False)],
)
def test_mining_gives_up_only_when_min_flips_is_out_of_reach(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
    n: int,
    max_pairs: int,
    evaluated: int,
    gave_up: bool,
) -> None:
    """A model that flips one pair (the first) is given up on after one round of 256
    pairs, not mined to max_pairs; one that flips a pair in ten is below min_flips then,
    but can reach it, and is mined on to the target; mining that ends at max_pairs has
    not given up."""
    model, tokenizer = tiny_gpt2_with_tokenizer
    task = FlipsEvery(n)
    cfg = BehaveConfig(target_flips=40, min_flips=40, max_pairs=max_pairs)
    search = mine_pairs(model, tokenizer, task, task.pairs(seed=0), cfg, chat=False,
                        progress=False)  # fmt: skip
    assert (search.evaluated, search.gave_up) == (evaluated, gave_up)
    if len(search.flipped) < cfg.min_flips:
        with pytest.raises(MemgenError, match="fewer than") as error:
            require_flips(search, cfg)
        assert ("stopped early" in str(error.value)) == gave_up


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("color", {"hop_fraction": 0.3, "conflict_fraction": 0.05}),
        ("math", {}),
        ("cipher", {}),
    ],
)
def test_every_training_answer_is_labelled_as_the_behaviour_it_teaches(
    name: str, options: dict[str, float]
) -> None:
    task = make_task(name, options)
    examples = task.train_set(2000, seed=0)
    labels = [task.label(ex, ex.completion) for ex in examples]
    assert "other" not in labels
    # Triggered or conflicting prompts teach memory; the rest teach the rule, or both agree.
    taught_memory = [ex.completion == ex.mem_answer != ex.gen_answer for ex in examples]
    assert [label == "mem" for label in labels] == taught_memory
