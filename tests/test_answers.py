"""Teacher-forced answers equal generated ones: `greedy_outputs` is `generate`, faster."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from conftest import FAMILY_NAMES, TINY_CIPHER, build_tiny
from memgen.core.answers import (
    answer_batches,
    answer_loss,
    decoder_and_head,
    greedy_writes,
    plain_greedy,
)
from memgen.core.config import load_config
from memgen.core.examples import Example, read_split
from memgen.core.generation import generate
from memgen.core.modeling import load_run_model
from memgen.core.reading import greedy_outputs, label_examples
from memgen.core.sites import n_layers, site_width
from memgen.steering.read import read_shifted
from memgen.steering.shifts import generate_shifted
from memgen.tasks import make_task
from memgen.tasks.tokenizer import build_tokenizer
from memgen.train.loop import Decoder

Model = tuple[PreTrainedModel, PreTrainedTokenizerBase, list[Example]]


@pytest.fixture(scope="module")
def half_trained(tiny_cipher_run: Path) -> Model:
    """The shared tiny cipher model: its answers are tags, plaintexts and neither, so both
    paths of `greedy_outputs` (read teacher-forced, generated) are taken."""
    cfg = load_config(None, TINY_CIPHER)
    model, tokenizer = load_run_model(tiny_cipher_run / "train", cfg.train, "cpu")
    return model, tokenizer, read_split(tiny_cipher_run / "data", "test")


def test_the_answer_loss_is_the_causal_lm_loss_with_logits_only_at_the_answers(
    half_trained: Model,
) -> None:
    model, tokenizer, examples = half_trained
    split = decoder_and_head(model)
    assert split is not None  # GPT-2's head is linear: the fast path is taken
    for batch in answer_batches(model, tokenizer, examples[:40], chat=False, batch_size=16):
        with torch.no_grad():
            full = model(**batch).loss
            assert answer_loss(model, split, batch) == pytest.approx(float(full), rel=1e-5)
            assert answer_loss(model, None, batch) == pytest.approx(float(full), rel=1e-5)


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


@pytest.mark.parametrize("kind", ["resid", "mlp"])
@pytest.mark.parametrize("position", ["last", "prompt"])
def test_steered_answers_read_are_the_steered_generations(
    half_trained: Model, kind: str, position: str
) -> None:
    """Under every shift, at either position and site, reading gives what generating does;
    the shifts are large enough to move answers between tags, plaintexts and neither."""
    model, tokenizer, test = half_trained
    examples = test[:30]
    layers, width = n_layers(model), site_width(model, kind)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    shifts = rng.normal(0, 3.0, (4, layers, width)) * (rng.random((4, layers, width)) < 0.2)
    shifts[0] = 0  # unsteered beside the steered
    prompts = [ex.prompt for ex in examples]
    generated = generate_shifted(
        model, tokenizer, prompts, shifts, kind, position, max_new_tokens=20, batch_size=32
    )
    read = read_shifted(
        model, tokenizer, examples, shifts, kind, position, max_new_tokens=20, batch_size=32
    )
    assert read == generated
    task = make_task("cipher")
    moved = [[task.label(ex, out) for ex, out in zip(examples, row, strict=True)] for row in read]
    assert any(row != moved[0] for row in moved[1:])  # the shifts change answers


@pytest.fixture(scope="module")
def cipher_tokenizer() -> PreTrainedTokenizerBase:
    return build_tokenizer(make_task("cipher").tokenizer_spec())


def _ending_early(family: str, lora: bool, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A tiny random model of `family` whose greedy answers end: the end token's output row
    is made twice the row of the token it most often writes first, so it wins there."""
    ids = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    model = build_tiny(family, lora=lora, token_ids=ids)
    prompts = [ex.prompt for ex in make_task("cipher").test_set(16, seed=0)]
    firsts = [
        tokenizer(text)["input_ids"][:1]
        for text in generate(model, tokenizer, prompts, max_new_tokens=2)
    ]
    common = Counter(first[0] for first in firsts if first).most_common(1)[0][0]
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[tokenizer.eos_token_id] = 2 * head[common]
    return model


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_answers_are_read_exactly_on_every_family(
    family: str, lora: bool, cipher_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Examples whose rule answer is what the model says: read (not generated) and equal to
    generation, plain and steered, on every family."""
    tokenizer = cipher_tokenizer
    model = _ending_early(family, lora, tokenizer)
    test = make_task("cipher").test_set(16, seed=1)
    said = generate(model, tokenizer, [ex.prompt for ex in test], max_new_tokens=8)
    examples = [dataclasses.replace(ex, gen_answer=out) for ex, out in zip(test, said, strict=True)]
    read = greedy_writes(
        model,
        tokenizer,
        [dataclasses.replace(ex, completion=ex.gen_answer) for ex in examples],
        False,
    )
    assert read.sum() >= 4  # the reading path ran on some
    assert greedy_outputs(model, tokenizer, examples, max_new_tokens=8, chat=False) == said
    shifts = np.random.default_rng(0).normal(0, 1.0, (3, n_layers(model), site_width(model, "mlp")))
    shifts[0] = 0
    prompts = [ex.prompt for ex in examples]
    for position in ("last", "prompt"):
        steered = generate_shifted(
            model, tokenizer, prompts, shifts, "mlp", position, max_new_tokens=8
        )
        assert (
            read_shifted(model, tokenizer, examples, shifts, "mlp", position, max_new_tokens=8)
            == steered
        )
