"""Teacher-forced answers equal generated ones: `greedy_outputs` is `generate`, faster."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from conftest import TINY_CIPHER
from memgen.core.answers import greedy_outputs, label_examples, plain_greedy
from memgen.core.config import load_config
from memgen.core.examples import Example, read_split
from memgen.core.generation import generate
from memgen.core.modeling import load_run_model
from memgen.tasks import make_task
from memgen.train.loop import Decoder

Model = tuple[PreTrainedModel, PreTrainedTokenizerBase, list[Example]]


@pytest.fixture(scope="module")
def half_trained(tiny_cipher_run: Path) -> Model:
    """The shared tiny cipher model: its answers are tags, plaintexts and neither, so both
    paths of `greedy_outputs` (read teacher-forced, generated) are taken."""
    cfg = load_config(None, TINY_CIPHER)
    model, tokenizer = load_run_model(tiny_cipher_run / "train", cfg.train, "cpu")
    return model, tokenizer, read_split(tiny_cipher_run / "data", "test")


def test_greedy_outputs_are_the_generated_answers(half_trained: Model) -> None:
    model, tokenizer, test = half_trained
    task = make_task("cipher")
    generated = generate(model, tokenizer, [ex.prompt for ex in test], max_new_tokens=20)
    read = greedy_outputs(model, tokenizer, test, max_new_tokens=20, chat=False, batch_size=64)
    assert read == generated
    labels = [task.label(ex, out) for ex, out in zip(test, generated, strict=True)]
    # Not a vacuous check: each behaviour is there, so both paths ran.
    assert {"mem", "gen", "other"} <= set(labels), labels


def test_a_budget_too_short_for_the_answer_is_generated(half_trained: Model) -> None:
    """With 5 new tokens a 13-letter plaintext cannot be written and stopped: the answer is
    cut where generation cuts it, not read whole."""
    model, tokenizer, test = half_trained
    generated = generate(model, tokenizer, [ex.prompt for ex in test[:40]], max_new_tokens=5)
    read = greedy_outputs(model, tokenizer, test[:40], max_new_tokens=5, chat=False)
    assert read == generated


def test_label_examples_generates_when_greedy_is_not_the_argmax(half_trained: Model) -> None:
    """A repetition penalty changes what greedy decoding writes: nothing is read then."""
    model, tokenizer, test = half_trained
    task = make_task("cipher")
    assert plain_greedy(model)
    model.generation_config.repetition_penalty = 3.0
    try:
        assert not plain_greedy(model)
        labelled = label_examples(model, tokenizer, task, test[:60], Decoder(), chat=False)
        penalised = generate(model, tokenizer, [ex.prompt for ex in test[:60]], max_new_tokens=20)
        assert [row.output for row in labelled] == penalised
    finally:
        model.generation_config.repetition_penalty = 1.0
