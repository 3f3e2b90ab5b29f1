"""Answer-margin gradients and attribution patching: the causal neuron score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.errors import MemgenError
from memgen.core.forks import Fork, answer_forks
from memgen.core.generation import encode_prompt
from memgen.core.hooks import Intervention, intervene
from memgen.core.sites import Site, site_width
from memgen.neurons.attribution import attribution
from memgen.record.gradients import margin_gradients
from memgen.tasks import make_task

Model = tuple[PreTrainedModel, PreTrainedTokenizerBase]


@torch.no_grad()
def _margin(model: PreTrainedModel, ids: list[int], mem: int, gen: int) -> float:
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return float(logits[mem] - logits[gen])


def _forks(mem_ids: np.ndarray, gen_ids: np.ndarray) -> list[Fork]:
    """Answers that part at their first token (`memgen.core.forks`)."""
    return [Fork((), int(m), int(g)) for m, g in zip(mem_ids, gen_ids, strict=True)]


def test_the_gradient_predicts_what_nudging_one_neuron_does_to_the_margin(
    tiny_gpt2_with_tokenizer: Model,
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    prompts = [ex.prompt for ex in make_task("color").test_set(5, seed=0)]
    mem_ids, gen_ids = np.array([5, 6, 7, 8, 9]), np.array([10, 11, 12, 13, 9])  # last: no margin
    width = site_width(model, "mlp")
    out = {"mlp": np.zeros((5, 2, width), np.float32), "resid": np.zeros((5, 2, 32), np.float32)}
    margin_gradients(
        model,
        tokenizer,
        prompts,
        _forks(mem_ids, gen_ids),
        ["resid", "mlp"],
        chat=False,
        batch_size=2,
        out=out,
    )
    assert not out["mlp"][4].any() and out["mlp"][:4].any()  # same first token: no margin
    assert all(p.requires_grad for p in model.parameters())  # the weights train again after
    eps = 1e-2
    for row in range(4):  # central differences, one prompt alone, unpadded
        ids = encode_prompt(tokenizer, prompts[row], chat=False)
        for kind, layer, neuron in (("mlp", 0, 3), ("mlp", 1, 17), ("resid", 0, 5)):
            moved = []
            for step in (eps, -eps):
                nudge = Intervention(Site(kind, layer), (neuron,), "add", (step,))  # type: ignore[arg-type]
                with intervene(model, [nudge]):
                    moved.append(_margin(model, ids, mem_ids[row], gen_ids[row]))
            slope = (moved[0] - moved[1]) / (2 * eps)
            assert slope == pytest.approx(out[kind][row, layer, neuron], rel=0.01, abs=1e-4)


def test_attribution_scores_what_moves_the_answer_not_what_merely_differs() -> None:
    rng = np.random.default_rng(0)
    n_pairs, shape = 40, (2, 6)
    labels = np.tile([1, 0], n_pairs)
    pair_ids = np.repeat(np.arange(n_pairs), 2)
    x = rng.normal(size=(2 * n_pairs, *shape))
    grads = rng.normal(scale=0.01, size=x.shape)
    x[labels == 1, 0, 1] += 3.0  # differs between the members, but the answer ignores it
    x[labels == 1, 1, 4] += 1.0  # differs, and the answer depends on it
    grads[:, 1, 4] = 2.0
    scores = attribution(x, grads, labels, pair_ids)
    assert np.unravel_index(np.abs(scores).argmax(), shape) == (1, 4)
    assert scores[1, 4] == pytest.approx(2.0, abs=0.3)  # a 1.0 change times a slope of 2
    assert abs(scores[0, 1]) < 0.1
    # Row order does not matter: pairs are found by id.
    order = rng.permutation(len(labels))
    np.testing.assert_allclose(
        attribution(x[order], grads[order], labels[order], pair_ids[order]), scores
    )


def test_attribution_refuses_pairs_missing_a_member_or_mismatched_arrays() -> None:
    x = np.zeros((4, 2, 3))
    with pytest.raises(MemgenError, match="both members"):
        attribution(x, x, np.array([1, 1, 0, 1]), np.array([0, 0, 1, 1]))
    with pytest.raises(MemgenError, match="do not match"):
        attribution(x, x[:, :1], np.array([1, 0, 1, 0]), np.array([0, 0, 1, 1]))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_margin_gradients_on_lora_models_of_each_family(
    family: str, tiny_gpt2_with_tokenizer: Model
) -> None:
    from conftest import build_tiny

    _, tokenizer = tiny_gpt2_with_tokenizer
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    model = build_tiny(family, lora=True, token_ids=ids)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    prompts = [ex.prompt for ex in make_task("color").test_set(3, seed=1)]
    mem_ids, gen_ids = np.array([5, 6, 7]), np.array([10, 11, 12])
    width = site_width(model, "mlp")
    out = {"mlp": np.zeros((3, 2, width), np.float32)}
    margin_gradients(
        model, tokenizer, prompts, _forks(mem_ids, gen_ids), ["mlp"], chat=False, batch_size=2,
        out=out,
    )  # fmt: skip
    assert [name for name, p in model.named_parameters() if p.requires_grad] == trainable
    ids0 = encode_prompt(tokenizer, prompts[0], chat=False)
    moved = []
    for step in (1e-2, -1e-2):
        with intervene(model, [Intervention(Site("mlp", 1), (3,), "add", (step,))]):
            moved.append(_margin(model, ids0, 5, 10))
    assert (moved[0] - moved[1]) / 2e-2 == pytest.approx(out["mlp"][0, 1, 3], rel=0.01, abs=1e-4)


def test_exact_patching_is_the_margin_change_of_setting_each_neuron_to_its_twins_value(
    tiny_gpt2_with_tokenizer: Model,
) -> None:
    """Checked through another code path (an `intervene` set at the last token, one
    neuron and one prompt at a time), and against attribution, which estimates it."""
    from memgen.record.patching import patching_scores

    model, tokenizer = tiny_gpt2_with_tokenizer
    prompts = [ex.prompt for ex in make_task("color").test_set(4, seed=1)]
    mem_ids, gen_ids = np.array([5, 6, 7, 8]), np.array([10, 11, 12, 13])
    width = site_width(model, "mlp")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, width)).astype(np.float32)  # stand-in activations: any values
    pairs = [(0, 1), (2, 3)]  # (mem row, gen row)
    scores = patching_scores(model, tokenizer, prompts, pairs, x, _forks(mem_ids, gen_ids), "mlp",
                             chat=False, batch_size=7)  # fmt: skip
    assert scores.shape == (2, width)
    for layer, neuron in ((0, 3), (1, 17), (1, width - 1)):
        expected = 0.0
        for m, g in pairs:
            for row, donor, sign in ((g, m, 1.0), (m, g, -1.0)):
                ids = encode_prompt(tokenizer, prompts[row], chat=False)
                base = _margin(model, ids, mem_ids[row], gen_ids[row])
                value = float(x[donor, layer, neuron])
                patch = Intervention(Site("mlp", layer), (neuron,), "set", (value,), "last")
                with intervene(model, [patch]):
                    moved = _margin(model, ids, mem_ids[row], gen_ids[row])
                expected += sign * (moved - base) / 2 / len(pairs)
        assert scores[layer, neuron] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_after_shared_answer_tokens_the_gradient_is_of_the_margin_where_the_answers_part(
    tiny_gpt2_with_tokenizer: Model,
) -> None:
    """Both answers start with `red`: the margin is read after it (fed as generation
    writes it), its gradient taken at the last prompt token, where record reads."""
    model, tokenizer = tiny_gpt2_with_tokenizer
    prompts = [ex.prompt for ex in make_task("color").test_set(3, seed=2)]
    forks = answer_forks(
        tokenizer, ["red blue", "red red olive", "lime"], ["red cyan", "red red teal", "gray"]
    )
    out = {"mlp": np.zeros((3, 2, site_width(model, "mlp")), np.float32)}
    margin_gradients(model, tokenizer, prompts, forks, ["mlp"], chat=False, batch_size=2, out=out)
    eps = 1e-2
    for row, fork in enumerate(forks):
        ids = encode_prompt(tokenizer, prompts[row], chat=False)
        for layer, neuron in ((0, 3), (1, 17)):
            moved = []
            for step in (eps, -eps):
                nudge = Intervention(Site("mlp", layer), (neuron,), "add", (step,))
                with torch.no_grad():
                    with intervene(model, [nudge]):  # the prompt's pass only
                        out_ = model(input_ids=torch.tensor([ids]), use_cache=True)
                    for token in fork.shared:
                        cache = out_.past_key_values
                        out_ = model(input_ids=torch.tensor([[token]]), past_key_values=cache)
                logits = out_.logits[0, -1]
                moved.append(float(logits[fork.token] - logits[fork.other]))
            slope = (moved[0] - moved[1]) / (2 * eps)
            assert slope == pytest.approx(out["mlp"][row, layer, neuron], rel=0.01, abs=1e-4)
    assert np.abs(out["mlp"][:2]).max() > 1e-3  # a neuron moves the margin after `red`
