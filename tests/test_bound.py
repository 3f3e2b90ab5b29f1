"""The steering bound: a fitted shared shift (the `bound` stage is tested in test_pipeline)."""

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.errors import MemgenError
from memgen.core.generation import encode_prompt, left_padded_positions, pad_id_of, pad_left
from memgen.core.hooks import intervene
from memgen.core.sites import Site
from memgen.steering.bound import as_interventions, fit_shift, split_half
from memgen.tasks.base import Example

PROMPTS = [
    "Bob is cat . Eve is cat . Eve is red . what color is Bob ?",
    "Lily is fox . Jack is fox . Jack is blue . what color is Lily ?",
    "Ivy is owl . Mike is owl . Mike is teal . what color is Ivy ?",
    "Kate is bat . Oscar is bat . Oscar is lime . what color is Kate ?",
]


def _examples(gen_answers: list[str]) -> list[Example]:
    return [
        Example(prompt=p, completion=g, mem_answer="white", gen_answer=g)
        for p, g in zip(PROMPTS, gen_answers, strict=True)
    ]


def _first_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model(**batch).logits[:, -1].argmax(-1)
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def test_a_fitted_shift_makes_one_answer_win_and_leaves_the_model_as_it_was(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    unsteered = _first_tokens(model, tokenizer)
    assert unsteered != ["olive"] * 4  # the random model does not already answer it
    site = Site("resid", 1)
    shift, fit = fit_shift(model, tokenizer, _examples(["olive"] * 4), site, "gen", steps=100)
    # One token for every prompt: a shift at the last layer can always make it win.
    assert fit == 1.0
    assert shift.shape == (32,) and np.linalg.norm(shift) > 0
    with intervene(model, as_interventions(site, shift)):
        assert _first_tokens(model, tokenizer) == ["olive"] * 4
    # Weights, their requires_grad flags and the hooks are as before.
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) and p.requires_grad
    assert _first_tokens(model, tokenizer) == unsteered


def test_fit_shift_refuses_empty_input(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    with pytest.raises(MemgenError, match="no prompts"):
        fit_shift(model, tokenizer, [], Site("resid", 0), "gen")


def test_split_half_is_seeded_and_disjoint() -> None:
    fit, held = split_half(11, seed=3)
    assert len(fit) == 5 and len(held) == 6
    assert sorted([*fit, *held]) == list(range(11))
    assert np.array_equal(split_half(11, seed=3)[0], fit)


def test_left_padded_positions_make_a_batch_match_each_prompt_alone(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    prompts = [PROMPTS[0], "Bob is cat . what color is Bob ?"]  # different lengths
    encoded = [encode_prompt(tokenizer, p, False) for p in prompts]
    ids, mask = pad_left(encoded, pad_id_of(tokenizer), torch.device("cpu"))
    assert mask[1].sum() < mask.shape[1]  # the short prompt is padded
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, position_ids=left_padded_positions(mask))
        for row, seq in enumerate(encoded):
            alone = model(input_ids=torch.tensor([seq])).logits[0, -1]
            torch.testing.assert_close(batch.logits[row, -1], alone, atol=1e-5, rtol=1e-5)
