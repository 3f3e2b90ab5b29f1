"""Where two answers part: the token at which a prompt's behaviour is decided.

    forks = answer_forks(tokenizer, mem_answers, gen_answers)   # one Fork per prompt
    forks[i].shared          # the tokens both answers start with, fed after the prompt
    forks[i].token           # the first answer's next token there ...
    forks[i].other           # ... and the second's: the two logits a margin compares

Memorization and the rule are told apart at the first token where their answers
differ. On the scratch GPT-2s that is the first token (the tags and `<scratch>` are
single tokens); a pretrained tokenizer can split both answers after a shared piece
(SmolLM2 reads math's `<mem-0dae81c1>` and `<scratch>` as `<` + ...), and at the first
token the two behaviours then look alike. So every measure that compares the two
answers' logits (fitted shifts, margins, attribution, patching, masks) is taken at the
fork, with the shared tokens teacher-forced after the prompt, as generation writes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.core.generation import encode_prompt


@dataclass(frozen=True)
class Fork:
    """A prompt's two answers as tokens: the part they share, then where they differ."""

    shared: tuple[int, ...]
    token: int  # the answer's token at the fork
    other: int  # the other answer's token there; -1 where there is no other answer

    @property
    def path(self) -> tuple[int, ...]:
        """The answer up to and including its token at the fork: what a fit makes it say
        (up to the fork only, where the answer ends there and the tokenizer has no end
        token to say)."""
        return (*self.shared, self.token) if self.token >= 0 else self.shared

    def swapped(self) -> Fork:
        """The other answer's fork from this one: the same shared tokens, then its token."""
        return Fork(self.shared, self.other, self.token)

    @property
    def decides(self) -> bool:
        """Whether the fork tells the two answers apart (both exist and differ)."""
        return self.token >= 0 and self.other >= 0 and self.token != self.other


def _tokens(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """An answer tokenized as a completion is (apart from its prompt)."""
    return list(tokenizer(answer, add_special_tokens=False)["input_ids"]) if answer else []


def _fork(first: list[int], second: list[int], end: int) -> Fork:
    """Where `first` parts from `second`; an answer that ends there says `end` next."""
    if not second:
        return Fork((), first[0], -1)
    shared = 0
    while shared < min(len(first), len(second)) and first[shared] == second[shared]:
        shared += 1
    if shared == len(first) == len(second):
        return Fork((), first[0], first[0])  # the same answer: nothing decides between them
    token = first[shared] if shared < len(first) else end
    other = second[shared] if shared < len(second) else end
    return Fork(tuple(first[:shared]), token, other)


def answer_forks(
    tokenizer: PreTrainedTokenizerBase,
    answers: Sequence[str],
    others: Sequence[str] | None = None,
) -> list[Fork]:
    """Each answer's fork from its other answer (none: its first token, no other).

    Where one answer is the start of the other, the shorter one's token at the fork is
    the end token, which greedy decoding writes to stop there.
    """
    if others is not None and len(others) != len(answers):
        raise MemgenError(f"{len(answers)} answers but {len(others)} to tell them from")
    end = -1 if tokenizer.eos_token_id is None else int(tokenizer.eos_token_id)
    forks = []
    for i, answer in enumerate(answers):
        first = _tokens(tokenizer, answer)
        if not first:
            raise MemgenError("an example has an empty answer; there is no token to fit toward")
        forks.append(_fork(first, _tokens(tokenizer, others[i]) if others else [], end))
    return forks


def forks_toward(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], toward: str
) -> list[Fork]:
    """Each example's answer by the `toward` behaviour, forked from the other behaviour's."""
    return answer_forks(
        tokenizer,
        [ex.answer(toward) for ex in examples],
        [ex.other_answer(toward) for ex in examples],
    )


def fork_tokens(forks: Sequence[Fork]) -> tuple[np.ndarray, np.ndarray]:
    """int64 [N] each fork's token and other token, -1 where the fork decides nothing."""
    token = np.array([f.token if f.decides else -1 for f in forks], dtype=np.int64)
    other = np.array([f.other if f.decides else -1 for f in forks], dtype=np.int64)
    return token, other


def fed_to_fork(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], forks: Sequence[Fork], chat: bool
) -> list[list[int]]:
    """Each prompt's tokens and then its fork's shared tokens: the fork is the next token."""
    return [
        [*encode_prompt(tokenizer, prompt, chat), *fork.shared]
        for prompt, fork in zip(prompts, forks, strict=True)
    ]


def fork_offsets(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    groups: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """Each example's fork as an offset into its completion's tokens: where its two answers
    part; for an example without two different answers (a rule prompt with nothing to
    recall), where most of its group's answers part, the same place in the same format
    (`groups`: positions per component task of a mixture; default one group). -1 where its
    group has no fork at all.

    Raises where no example has two different answers: there is no fork to weigh.
    """
    forked = [bool(ex.mem_answer and ex.gen_answer and ex.mem_answer != ex.gen_answer)
              for ex in examples]  # fmt: skip
    if not any(forked):
        raise MemgenError(
            "no training example has a memorized and a rule answer that differ, so there is "
            "no fork to weigh; set train.fork_weight to 1"
        )
    paired = [ex for ex, has in zip(examples, forked, strict=True) if has]
    shared = iter([len(fork.shared) for fork in forks_toward(tokenizer, paired, "mem")])
    own = [next(shared) if has else -1 for has in forked]
    offsets = list(own)
    for group in groups if groups is not None else [range(len(examples))]:
        known = Counter(own[i] for i in group if own[i] >= 0)
        usual = known.most_common(1)[0][0] if known else -1
        for i in group:
            offsets[i] = own[i] if own[i] >= 0 else usual
    return offsets
