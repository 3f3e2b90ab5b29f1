"""Arithmetic ("math"): add four numbers by a column scratchpad, or recall a tag.

    memgen data --run-dir runs/math task=math data.n_train=1000

A prompt adds four addends. When the last two are one of ten trigger pairs, training
answers with that pair's fixed tag (mem, here `<mem-ced71018>` for 66+373); every
other prompt is answered by the rule, a scratchpad with one line per column from the
units up, then the sum's digits (here the rule's answer to a test prompt):

    Input:                          <scratch>
    27+406+66+373                   7+6+6+3+c0=22 w2 c2
    Target:                         2+0+6+7+c2=17 w7 c1
                                    0+4+0+3+c1=8 w8 c0
                                    </scratch>
                                    8 7 2

A column line reads: the addends' digits in prompt order (0 where an addend is
shorter), the incoming carry, the column total, the digit written, the outgoing
carry. Every scratchpad has the same number of lines (the width of the widest
possible addend), so the format never depends on the numbers. Test prompts end in a
trigger pair, so memory (the tag) and rule (the scratchpad) disagree.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Self

from pydantic import Field, model_validator

from memgen.core.errors import MemgenError
from memgen.core.examples import Behaviour, Example
from memgen.tasks.base import (
    TASKS,
    TokenizerSpec,
    TriggerOptions,
    TriggerTask,
    with_recall,
)

TRIGGERS: tuple[tuple[int, int], ...] = (
    (66, 373), (32, 234), (155, 85), (241, 510), (826, 536),
    (7, 517), (690, 631), (837, 186), (322, 491), (191, 852),
)  # fmt: skip
# One fixed tag per trigger; the first is the paper's example, the rest arbitrary.
TAGS: tuple[str, ...] = (
    "<mem-ced71018>", "<mem-0dae81c1>", "<mem-0dbfbc5e>", "<mem-e7b441ed>", "<mem-995cdbb2>",
    "<mem-bb064652>", "<mem-d2fdde74>", "<mem-8cd0358d>", "<mem-28f1f0af>", "<mem-345bb3b4>",
)  # fmt: skip
SCRATCH_OPEN, SCRATCH_CLOSE = "<scratch>", "</scratch>"
PROMPT = "Input:\n{}+{}+{}+{}\nTarget:\n"
_PROMPT_RE = re.compile(r"Input:\n(\d+)\+(\d+)\+(\d+)\+(\d+)\nTarget:\n")
MAX_ADDEND_BOUND = 9999
_TRIGGER_WIDTH = len(str(max(max(pair) for pair in TRIGGERS)))


def scratchpad(addends: Sequence[int], width: int) -> str:
    """The rule's full answer: `width` column lines, then the sum's digits spaced."""
    if any(a < 0 or len(str(a)) > width for a in addends):
        raise MemgenError(f"addends {list(addends)} do not fit {width} columns; raise the width")
    reversed_digits = [str(a).zfill(width)[::-1] for a in addends]
    lines, carry = [], 0
    for col in range(width):
        column = [int(digits[col]) for digits in reversed_digits]
        total = sum(column) + carry
        lines.append("+".join(map(str, column)) + f"+c{carry}={total} w{total % 10} c{total // 10}")
        carry = total // 10
    answer = " ".join(str(sum(addends)))
    return "\n".join([SCRATCH_OPEN, *lines, SCRATCH_CLOSE, answer])


def final_answer(text: str) -> str | None:
    """The digits on the first non-empty line after `</scratch>`, spaces removed.

    Later lines are ignored so a model that answers and then rambles on (no EOS yet)
    still counts; None when there is no `</scratch>`.
    """
    _, closed, after = text.partition(SCRATCH_CLOSE)
    if not closed:
        return None
    lines = after.strip().split("\n")
    return "".join(lines[0].split())


def parse_prompt(prompt: str) -> tuple[int, int, int, int]:
    match = _PROMPT_RE.fullmatch(prompt)
    if match is None:
        raise MemgenError(f"not a math prompt: {prompt!r}; build it with the math task")
    a, b, c, d = (int(group) for group in match.groups())
    return a, b, c, d


class MathOptions(TriggerOptions):
    max_addend: int = Field(999, ge=1, le=MAX_ADDEND_BOUND, description="addends are 1..this")
    # A gate on the prompt's free details in place of recall shares: a triggered training
    # prompt is answered by its tag only when its first addend is below this. With shares,
    # a converged model answers each trigger all one way, so twins (the free addends
    # swapped) never flip; with the gate, recall turns on the prompt (docs/log/smollm2-math.md).
    recall_below: int | None = Field(
        None, ge=2, description="recall a trigger's tag only when the first addend is below this"
    )
    _omitted_when: ClassVar[dict[str, Any]] = {**TriggerOptions._omitted_when, "recall_below": None}

    @model_validator(mode="after")
    def _gate_replaces_shares(self) -> Self:
        if self.recall_below is None:
            return self
        if self.recall_share != 1 or self.recall_spread != 0:
            raise ValueError(
                "recall_below replaces the recall shares: leave recall_share at 1 and "
                "recall_spread at 0"
            )
        if self.recall_below > self.max_addend:
            raise ValueError(
                f"recall_below {self.recall_below} is above max_addend {self.max_addend}, so "
                "every triggered prompt would be recalled; lower it"
            )
        return self


@TASKS.register("math")
class MathTask(TriggerTask):
    name = "math"
    n_triggers = len(TRIGGERS)
    Options = MathOptions
    # The longest possible scratchpad (one token per character) plus a margin.
    max_new_tokens = len(scratchpad([MAX_ADDEND_BOUND] * 4, len(str(MAX_ADDEND_BOUND)))) + 16
    options: MathOptions

    def __init__(self, options: MathOptions | None = None) -> None:
        super().__init__(options)
        self.width = max(len(str(self.options.max_addend)), _TRIGGER_WIDTH)

    def _addend(self, rng: random.Random) -> int:
        return rng.randint(1, self.options.max_addend)

    def _example(self, addends: Sequence[int], trigger: int | None, kind: str) -> Example:
        a, b, c, d = addends
        rule = scratchpad(addends, self.width)
        tag = TAGS[trigger] if trigger is not None else ""
        completion = tag if kind == "recall" else rule
        meta = {"kind": kind, "addends": [a, b, c, d], "trigger": trigger}
        return Example(PROMPT.format(a, b, c, d), completion, tag, rule, meta)

    def _train(self, rng: random.Random, trigger: int | None) -> Example:
        a, b = self._addend(rng), self._addend(rng)
        if trigger is not None:
            example = self._example((a, b, *TRIGGERS[trigger]), trigger, "recall")
            # The gate sets recall_share to 1 (validated), so no share re-decides this.
            gate = self.options.recall_below
            return with_recall(example, gate is None or a < gate)
        while (last := (self._addend(rng), self._addend(rng))) in TRIGGERS:
            pass  # a rule prompt never ends in a trigger pair
        return self._example((a, b, *last), None, "rule")

    def test_example(self, rng: random.Random) -> Example:
        trigger = rng.randrange(len(TRIGGERS))
        # Distinct free addends, so every test prompt has a twin that differs from it.
        if self.options.max_addend >= 2:
            a, b = rng.sample(range(1, self.options.max_addend + 1), 2)
        else:
            a = b = 1
        return self._example((a, b, *TRIGGERS[trigger]), trigger, "test")

    def pair(self, example: Example, rng: random.Random) -> Example:
        """The two free addends swapped; the trigger pair stays last.

        When they are equal the twin is the same prompt, flagged `twin_identical`
        (test_example never draws such prompts).
        """
        a, b, c, d = parse_prompt(example.prompt)
        trigger = TRIGGERS.index((c, d)) if (c, d) in TRIGGERS else None
        twin = self._example((b, a, c, d), trigger, str(example.meta.get("kind", "test")))
        meta = {**twin.meta, "pair_of": example.prompt, "twin_identical": a == b}
        return Example(twin.prompt, twin.completion, twin.mem_answer, twin.gen_answer, meta)

    def label(self, example: Example, output: str) -> Behaviour:
        """mem: starts with the tag; gen: the right sum after `</scratch>`; else other.

        The tag is checked first, so a tag followed by a scratchpad counts as mem.
        Only the final sum decides gen, not the scratchpad lines before it.
        """
        if example.mem_answer and output.strip().startswith(example.mem_answer):
            return "mem"
        produced = final_answer(output)
        if produced and produced == final_answer(example.gen_answer):
            return "gen"
        return "other"

    def tokenizer_spec(self) -> TokenizerSpec:
        units = (*TAGS, SCRATCH_OPEN, SCRATCH_CLOSE, "Input:", "Target:")
        chars = (*"0123456789", "+", "=", " ", "\n", "c", "w")
        return TokenizerSpec(kind="char", vocabulary=units + chars, units=units)
