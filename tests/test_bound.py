"""Fitted shifts, as `memgen bound` and the `fitted` method use them (stages: test_pipeline)."""

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.errors import MemgenError
from memgen.core.generation import encode_prompt, left_padded_positions, pad_id_of, pad_left
from memgen.steering.bench import tuning_and_held_out
from memgen.steering.methods import SiteStats, activation_scale, shift_size
from memgen.steering.shifts import fit_shifts, generate_shifted

PROMPTS = [
    "Bob is cat . Eve is cat . Eve is red . what color is Bob ?",
    "Lily is fox . Jack is fox . Jack is blue . what color is Lily ?",
    "Ivy is owl . Mike is owl . Mike is teal . what color is Ivy ?",
    "Kate is bat . Oscar is bat . Oscar is lime . what color is Kate ?",
]


def _first_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model(**batch).logits[:, -1].argmax(-1)
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def test_fitted_shifts_make_one_answer_win_and_leave_the_model_as_it_was(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    unsteered = _first_tokens(model, tokenizer)
    assert unsteered != ["olive"] * 4  # the random model does not already answer it
    # Two shifts fitted together: the whole of layer 1, and 4 neurons of layer 1 under a
    # budget of 0.5 (in units of `scale`).
    masks = np.zeros((2, 2, 32), dtype=bool)
    masks[0, 1] = True
    masks[1, 1, :4] = True
    shifts, fit = fit_shifts(
        model, tokenizer, PROMPTS, ["olive"] * 4, masks, np.ones((2, 32)), "resid",
        budget=[100.0, 0.5], steps=100,
    )  # fmt: skip
    # One token for every prompt: a shift at the last layer can always make it win.
    assert fit[0] == 1.0
    assert shifts.shape == (2, 2, 32)
    assert not shifts[:, 0].any() and not shifts[1, 1, 4:].any()  # only what the mask allows
    assert np.linalg.norm(shifts[1]) == pytest.approx(0.5, rel=1e-4)  # held to its budget
    outputs = generate_shifted(model, tokenizer, PROMPTS, shifts, "resid", "last",
                               max_new_tokens=1)  # fmt: skip
    assert outputs[0] == ["olive"] * 4
    # Weights, their requires_grad flags and the hooks are as before.
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) and p.requires_grad
    assert _first_tokens(model, tokenizer) == unsteered


def test_a_budget_in_norm_units_is_the_push_each_model_feels(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """With `SiteStats.norm_metric`, a budget is the shift's norm over the layer's mean
    activation norm (`shift_size`'s `relative_norm`) for whatever neuron sds the model
    has; in sd units the same budget pushes in proportion to the sds."""
    model, tokenizer = tiny_gpt2_with_tokenizer
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (64, 2, 32)) * np.array([1.0, 3.0])[None, :, None]
    masks = np.zeros((1, 2, 32), dtype=bool)
    masks[0, 1, :6] = True
    pushes = {}
    for spread in (1.0, 4.0):  # the same layer norms, neurons 4x as spread on the second
        sd, mean_norm = activation_scale(x)
        stats = SiteStats("resid", x, np.arange(64) % 2, np.zeros((2, 32)), sd * spread, mean_norm)
        for unit, metric in (("sd", None), ("norm", stats.norm_metric())):
            shifts, _ = fit_shifts(
                model, tokenizer, PROMPTS, ["olive"] * 4, masks, stats.unit(), "resid",
                budget=0.05, steps=30, metric=metric,
            )  # fmt: skip
            pushes[unit, spread] = shift_size(shifts[0], stats)["relative_norm"]
    assert pushes["norm", 1.0] == pytest.approx(0.05, rel=1e-3)
    assert pushes["norm", 4.0] == pytest.approx(0.05, rel=1e-3)
    # (up to where on the ball the fit ends: its neurons' sds differ a little)
    assert pushes["sd", 4.0] == pytest.approx(4 * pushes["sd", 1.0], rel=0.02)


def test_fit_shifts_refuses_empty_input_and_a_bad_budget(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    masks, scale = np.ones((1, 2, 32), dtype=bool), np.ones((2, 32))
    with pytest.raises(MemgenError, match="no prompts"):
        fit_shifts(model, tokenizer, [], [], masks, scale, "resid")
    for budget in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(MemgenError, match="budget"):
            fit_shifts(model, tokenizer, PROMPTS, ["olive"] * 4, masks, scale, "resid",
                       budget=budget)  # fmt: skip


def test_tuning_and_held_out_halves_are_seeded_and_disjoint() -> None:
    fit, held = tuning_and_held_out(11, seed=3)
    assert len(fit) == 5 and len(held) == 6
    assert sorted([*fit, *held]) == list(range(11))
    assert np.array_equal(tuning_and_held_out(11, seed=3)[0], fit)


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


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_cached_prefix_gives_the_logits_of_a_full_forward_under_each_shift(
    family: str, attention: str, token_ids: torch.Tensor
) -> None:
    """Fitting runs the prompt once into a shared KV cache; the copies must not differ."""
    from conftest import HIDDEN, LAYERS, build_tiny
    from memgen.core.prefix import Prefix
    from memgen.steering.prefix import steered_last_logits
    from memgen.steering.shifts import RowShifts

    model = build_tiny(family)
    model.set_attn_implementation(attention)
    mask = torch.ones_like(token_ids)
    mask[1, :3] = 0  # a left-padded row
    shifts = torch.randn(3, LAYERS, HIDDEN, generator=torch.Generator().manual_seed(0))
    shifter = RowShifts("resid", list(range(LAYERS)), "last")
    prefix = Prefix.of(model, token_ids, mask, batch_size=1)  # in parts, as fits do
    with torch.no_grad(), shifter.attached(model):
        cached = steered_last_logits(model, shifter, prefix, shifts)  # [prompts, shifts, vocab]
        picked = steered_last_logits(model, shifter, prefix.select([1]), shifts[1:2])
        for k in range(len(shifts)):
            shifter.rows = shifts[k : k + 1].expand(len(token_ids), -1, -1)
            full = model(input_ids=token_ids, attention_mask=mask,
                         position_ids=left_padded_positions(mask)).logits[:, -1]  # fmt: skip
            torch.testing.assert_close(cached[:, k], full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(picked[0, 0], cached[1, 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cached[:, 0], cached[:, 1])  # the two shifts differ


@pytest.mark.parametrize("position", ["last", "prompt"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_from_a_cached_prefix_steers_as_generation_from_the_whole_prompt(
    family: str, position: str, token_ids: torch.Tensor
) -> None:
    """Steered generation runs each prompt's shared part once; the tokens must not change."""
    from conftest import HIDDEN, LAYERS, build_tiny
    from memgen.core.modeling import cache_argument
    from memgen.core.prefix import Prefix
    from memgen.steering.shifts import RowShifts

    model = build_tiny(family).eval()
    mask = torch.ones_like(token_ids)
    mask[1, :3] = 0  # a left-padded row
    shifts = 3 * torch.randn(3, LAYERS, HIDDEN, generator=torch.Generator().manual_seed(1))
    shifter = RowShifts("resid", list(range(LAYERS)), position)
    kwargs = {"attention_mask": mask, "max_new_tokens": 5, "do_sample": False,
              "pad_token_id": 0, "eos_token_id": None}  # fmt: skip
    with torch.no_grad(), shifter.attached(model):
        plain = model.generate(input_ids=token_ids, **kwargs)
        shifter.rows = shifts
        whole = model.generate(input_ids=token_ids, **kwargs)
        shifter.rows = None
        prefix = Prefix.of(model, token_ids, mask)
        shifter.rows = shifts
        cached = model.generate(
            input_ids=token_ids, **kwargs, **{cache_argument(model): prefix.cache(model)}
        )
    assert torch.equal(cached, whole)
    assert not torch.equal(whole, plain)  # the shifts change the answers


def test_a_fitted_vector_steers_through_intervene_as_documented(
    family_model: tuple[str, PreTrainedModel],
) -> None:
    """docs/results-schema.md: `as_interventions` turns a saved shift into one dense add."""
    from memgen.bound.stage import as_interventions
    from memgen.core.hooks import intervene
    from memgen.core.sites import Site, site_width

    model = family_model[1]
    width = site_width(model, "resid")
    shift = np.linspace(-1, 1, width)
    (iv,) = as_interventions(Site("resid", 0), shift)
    assert iv.op == "add" and iv.neurons == tuple(range(width)) and len(iv.values) == width
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        plain = model(ids).logits
        with intervene(model, [iv]):
            steered = model(ids).logits
    assert not torch.allclose(plain, steered)
