"""Flip mining's counts, and the labels the side-effect check compares against."""

from __future__ import annotations

import itertools

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.behave.pairs import mine_pairs
from memgen.core.config import BehaveConfig
from memgen.core.examples import Example
from memgen.tasks import make_task
from memgen.tasks.color import ColorTask


class EveryPairFlips(ColorTask):
    """The color task with a labeller that calls the first member of each pair mem and the
    second gen (members are labelled in order), whatever the model answers."""

    def __init__(self) -> None:
        super().__init__()
        self._calls = itertools.count()

    def label(self, example: Example, output: str):  # type: ignore[no-untyped-def]
        return "mem" if next(self._calls) % 2 == 0 else "gen"


def test_the_flip_rate_counts_pairs_up_to_the_target(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    task = EveryPairFlips()
    cfg = BehaveConfig(target_flips=10, min_flips=2, max_pairs=1000)
    search = mine_pairs(model, tokenizer, task, task.pairs(seed=0), cfg, chat=False,
                        progress=False)  # fmt: skip
    assert (len(search.flipped), search.evaluated, search.flip_rate) == (10, 10, 1.0)


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
