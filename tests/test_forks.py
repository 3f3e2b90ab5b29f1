"""Where two answers part (`memgen.core.forks`), and the measures taken there: margins and
fitted shifts read after the shared tokens, as generation writes them."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import memgen
from memgen import Steering
from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.core.forks import Fork, answer_forks, fork_offsets, fork_tokens
from memgen.core.generation import encode_prompt
from memgen.core.modeling import model_identity
from memgen.steering.shifts import fit_shifts, fork_margins, generate_shifted, next_token_kl

PROMPTS = [
    "Bob is cat . Eve is cat . Eve is red . what color is Bob ?",
    "Ivy is owl . what color is Ivy ?",
    "Kate is bat . Oscar is bat . Oscar is lime . what color is Kate ?",
]


def test_math_answers_part_after_the_piece_a_pretrained_tokenizer_splits_off() -> None:
    """The scratch tokenizer keeps math's tag and `<scratch>` whole: they part at once.
    Split a character at a time (as SmolLM2's BPE splits both after `<`), they share `<`."""
    from memgen.tasks import make_task
    from memgen.tasks.base import TokenizerSpec
    from memgen.tasks.math import SCRATCH_OPEN, TAGS
    from memgen.tasks.tokenizer import build_tokenizer

    tag, pad = TAGS[0], f"{SCRATCH_OPEN}\n1+2+c0=3 w3 c0"
    whole = build_tokenizer(make_task("math").tokenizer_spec())
    (fork,) = answer_forks(whole, [tag], [pad])
    assert fork.shared == () and fork.decides
    split = build_tokenizer(TokenizerSpec(kind="char", vocabulary=tuple(string.printable)))
    (fork,) = answer_forks(split, [tag], [pad])
    assert split.decode(list(fork.shared)) == "<" and fork.decides
    assert split.decode([fork.token, fork.other]) == f"{tag[1]}{pad[1]}"
    assert fork.path == (*fork.shared, fork.token) and fork.swapped().token == fork.other


def test_fork_offsets_fall_back_on_the_groups_usual_fork() -> None:
    """A rule-only prompt is weighed where its own task's answers part; a task whose two
    answers always agree (or one that has no fork) is not weighed; no fork at all is refused."""
    from memgen.tasks.base import TokenizerSpec
    from memgen.tasks.tokenizer import build_tokenizer

    split = build_tokenizer(TokenizerSpec(kind="char", vocabulary=tuple(string.printable)))
    math_like = [
        Example("p", "<mem-1>", "<mem-1>", "<scratch>"),
        Example("p", "<scratch>", "", "<scratch>"),
    ]
    color_like = [Example("q", "red", "red", "red"), Example("q", "blue", "", "blue")]
    plain = [Example("q", "red", "blue", "red"), Example("q", "blue", "", "blue")]
    examples = math_like + color_like + plain
    assert fork_offsets(split, examples, [[0, 1], [2, 3], [4, 5]]) == [1, 1, -1, -1, 0, 0]
    assert fork_offsets(split, examples) == [1, 1, 1, 1, 0, 1]  # one group: the usual fork
    with pytest.raises(MemgenError, match="fork_weight to 1"):
        fork_offsets(split, color_like)


def test_forks_of_answers_that_end_agree_or_are_missing(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    _, tokenizer = tiny_gpt2_with_tokenizer
    eos = tokenizer.eos_token_id
    red, blue, olive = (tokenizer.convert_tokens_to_ids(w) for w in ("red", "blue", "olive"))
    answers = ["red blue", "red", "red blue", "red", "olive"]
    forks = answer_forks(tokenizer, answers, ["red olive", "red blue", "red blue", "", "red"])
    assert forks[0] == Fork((red,), blue, olive)
    assert forks[1] == Fork((red,), eos, blue)  # an answer that ends says the end token
    assert not forks[2].decides and not forks[3].decides  # the same answer; no other one
    assert forks[4] == Fork((), olive, red)
    token, other = fork_tokens(forks)
    assert token.tolist() == [blue, eos, -1, -1, olive]
    assert other.tolist() == [olive, blue, -1, -1, red]
    assert answer_forks(tokenizer, ["red"]) == [Fork((), red, -1)]
    ended = Fork((red,), -1, blue)  # an answer that ends where no end token can be said
    assert not ended.decides and ended.path == (red,)
    with pytest.raises(MemgenError, match="empty answer"):
        answer_forks(tokenizer, ["red", ""], ["blue", "red"])
    with pytest.raises(MemgenError, match="2 answers but 1"):
        answer_forks(tokenizer, ["red", "blue"], ["blue"])


def _generated_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    fork: Fork,
    shift: np.ndarray,
    position: str = "last",
) -> torch.Tensor:
    """The logits at the fork as generation meets it: the prompt, then each shared token
    fed on the cache, every pass steered at its last position ("prompt": the first)."""
    identity = model_identity(model)
    steering = Steering(identity, "resid", position, shift)  # type: ignore[arg-type]
    with memgen.steer(model, steering), torch.no_grad():
        ids = torch.tensor([encode_prompt(tokenizer, prompt, False)])
        out = model(input_ids=ids, use_cache=True)
        for token in fork.shared:
            out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values,
                        use_cache=True)  # fmt: skip
    return out.logits[0, -1].float()


def _margin(logits: torch.Tensor, fork: Fork) -> float:
    return float(logits[fork.token] - logits[fork.other])


def test_fork_margins_are_read_where_generation_meets_the_fork(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """Row 0 unsteered, row k under shift k, on prompts of different lengths batched
    together, whose answers part at once, after one shared token, or after two."""
    model, tokenizer = tiny_gpt2_with_tokenizer
    wanted, unwanted = ["red", "red blue", "red red olive"], ["white", "red cyan", "red red lime"]
    rng = np.random.default_rng(0)
    shifts = np.zeros((2, 2, 32))
    shifts[0, 0, :6] = rng.normal(0, 4, 6)
    shifts[1, 1] = rng.normal(0, 2, 32)
    got = fork_margins(model, tokenizer, PROMPTS, wanted, unwanted, shifts, "resid", batch_size=4)
    forks = answer_forks(tokenizer, wanted, unwanted)
    assert [len(fork.shared) for fork in forks] == [0, 1, 2]
    pairs = list(zip(PROMPTS, forks, strict=True))
    expected = [
        [_margin(_generated_logits(model, tokenizer, p, f, shift), f) for p, f in pairs]
        for shift in [np.zeros((2, 32)), *shifts]
    ]
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.abs(got[1:] - got[0]).max() > 0.1  # the shifts move the margins
    same = fork_margins(model, tokenizer, PROMPTS[:1], ["red"], ["red"], shifts, "resid")
    assert np.isnan(same).all()  # answers that never part have no margin
    # Steered at the prompt's pass only, the shared tokens are fed unshifted.
    first = fork_margins(model, tokenizer, PROMPTS, wanted, unwanted, shifts, "resid",
                         position="prompt")  # fmt: skip
    at_prompt = [
        [_margin(_generated_logits(model, tokenizer, p, f, shift, "prompt"), f) for p, f in pairs]
        for shift in shifts
    ]
    np.testing.assert_allclose(first[1:], at_prompt, atol=1e-4)
    np.testing.assert_allclose(first[:, 0], got[:, 0], atol=1e-5)  # no shared token: as "last"
    assert np.abs(first[1:, 1:] - got[1:, 1:]).max() > 1e-3


def test_a_shift_fitted_at_the_fork_is_judged_as_generation_would_judge_it(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """Two shifts fitted together, each toward an answer that starts like the one it
    steers away from. One shift added at every position can make this random model say
    `olive olive` (it pushes `olive` everywhere), not `? red` (its `?` then `red`, where
    it already says `? ?`). The in-sample fit must say which, as greedy generation does,
    and the fitted branch must be the one taken."""
    model, tokenizer = tiny_gpt2_with_tokenizer
    plain = generate_shifted(model, tokenizer, PROMPTS, np.zeros((1, 2, 32)), "resid", "last",
                             max_new_tokens=2)[0]  # fmt: skip
    assert plain == ["? ?"] * 3
    masks = np.ones((1, 2, 32), dtype=bool)
    wanted, others = ["olive olive", "? red"], ["olive red", "? blue"]
    unit = np.ones((2, 32))

    def fit(want: str, other: str) -> tuple[np.ndarray, np.ndarray]:
        return fit_shifts(model, tokenizer, PROMPTS, [want] * 3, masks, unit, "resid",
                          budget=100.0, steps=150, others=[other] * 3)  # fmt: skip

    fitted = [fit(want, other) for want, other in zip(wanted, others, strict=True)]
    shifts = np.concatenate([shift for shift, _ in fitted])
    outputs = generate_shifted(model, tokenizer, PROMPTS, shifts, "resid", "last",
                               max_new_tokens=2)  # fmt: skip
    for (_, fit), want, said in zip(fitted, wanted, outputs, strict=True):
        assert fit[0] == np.mean([out == want for out in said])
    assert outputs[0] == ["olive olive"] * 3 and "? red" not in outputs[1]
    margins = fork_margins(model, tokenizer, PROMPTS, ["olive olive"] * 3, ["olive red"] * 3,
                           shifts[:1], "resid")  # fmt: skip
    assert (margins[1] > 0).all()  # at the fork, after `olive`, the wanted branch leads


def test_the_kl_at_forks_is_that_of_the_distributions_generation_meets_there(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    forks = answer_forks(tokenizer, ["red", "red blue", "red red olive"],
                         ["white", "red cyan", "red red lime"])  # fmt: skip
    shifts = np.random.default_rng(1).normal(0, 1, (2, 2, 32))
    got = next_token_kl(model, tokenizer, PROMPTS, shifts, "resid", forks=forks)
    zero = np.zeros((2, 32))
    for k, shift in enumerate(shifts):
        kls = []
        for prompt, fork in zip(PROMPTS, forks, strict=True):
            base = torch.log_softmax(_generated_logits(model, tokenizer, prompt, fork, zero), -1)
            moved = torch.log_softmax(_generated_logits(model, tokenizer, prompt, fork, shift), -1)
            kls.append(float((base.exp() * (base - moved)).sum()))
        assert got[k] == pytest.approx(np.mean(kls), rel=1e-3, abs=1e-6)
    at_prompt = next_token_kl(model, tokenizer, PROMPTS, shifts, "resid")
    assert not np.allclose(got, at_prompt)  # two of the three are read a token or two later
