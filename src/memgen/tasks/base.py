"""What every task provides: generators, a pair maker, a labeller and a tokenizer spec.

A task builds prompts that can be answered two ways: by recalling what training
showed for this exact cue (memorization, `mem`) or by applying the rule learned from
many examples (generalization, `gen`). Training examples let both strategies fit;
test examples make them disagree.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from memgen.core.errors import MemgenError
from memgen.core.examples import Behaviour, Example
from memgen.core.registry import Registry


class TaskOptions(BaseModel):
    """Base for a task's own knobs (`data.options` in the config)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class TokenizerSpec:
    """How to build a tokenizer for GPT-2-from-scratch on this task.

    `kind="word"`: split on whitespace and punctuation, tokens joined by spaces.
    `kind="char"`: one token per character, except the `units` (multi-character
    tokens such as tags) and the `words` (whole words, one token each, matched only
    where no letter touches them), decoded by plain concatenation.
    """

    kind: Literal["word", "char"]
    vocabulary: tuple[str, ...]
    units: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    @staticmethod
    def union(specs: Sequence[TokenizerSpec]) -> TokenizerSpec:
        """One spec that covers every spec's text (several tasks in one model).

        Word tokenizers alone stay one; with any char tokenizer the result reads
        characters, the word vocabularies become whole-word tokens and the space between
        words a token of its own.
        """
        vocabulary = tuple(dict.fromkeys(token for spec in specs for token in spec.vocabulary))
        if all(spec.kind == "word" for spec in specs):
            return TokenizerSpec(kind="word", vocabulary=vocabulary)
        units = tuple(dict.fromkeys(u for spec in specs if spec.kind == "char" for u in spec.units))
        words = tuple(
            dict.fromkeys(
                word
                for spec in specs
                for word in (spec.vocabulary if spec.kind == "word" else spec.words)
            )
        )
        vocabulary = tuple(dict.fromkeys([*vocabulary, " "]))
        return TokenizerSpec(kind="char", vocabulary=vocabulary, units=units, words=words)


class Task(ABC):
    """Subclass, set `name` and `Options`, and register with `@TASKS.register(name)`."""

    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    # Generation budget for one answer (GPT-2 scratch tokenizer tokens).
    max_new_tokens: int = 8

    def __init__(self, options: TaskOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def train_example(self, rng: random.Random) -> Example:
        """One training example; memory and rule agree or only one applies."""

    @abstractmethod
    def test_example(self, rng: random.Random) -> Example:
        """One test example whose memorized and rule answers differ."""

    @abstractmethod
    def pair(self, example: Example, rng: random.Random) -> Example:
        """A near-identical twin of a test example (same cue, small surface change)."""

    @abstractmethod
    def label(self, example: Example, output: str) -> Behaviour:
        """Which behaviour a generated continuation shows."""

    @abstractmethod
    def tokenizer_spec(self) -> TokenizerSpec:
        """Everything a from-scratch tokenizer must cover."""

    def train_set(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{self.name}-train-{seed}")
        return [self.train_example(rng) for _ in range(n)]

    def test_set(self, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{self.name}-test-{seed}")
        return [self.test_example(rng) for _ in range(n)]

    def dev_set(self, n: int, seed: int, test: Iterable[Example]) -> list[Example]:
        """Test-distribution prompts from another seed stream, none of them a test prompt.

        Checkpoints are chosen on these, so test rates are measured on prompts no choice saw.
        """
        taken = {ex.prompt for ex in test}
        rng = random.Random(f"{self.name}-dev-{seed}")
        dev: list[Example] = []
        for _ in range(100 * n):
            example = self.test_example(rng)
            if example.prompt not in taken:
                dev.append(example)
                if len(dev) == n:
                    return dev
        raise MemgenError(
            f"{self.name}: found only {len(dev)} of {n} dev prompts unlike every test prompt; "
            "lower data.n_dev or data.n_test"
        )

    def rule_check_set(self, n: int, seed: int) -> list[Example]:
        """Prompts on which to check that `gen` answers follow the rule, not a shortcut.

        Empty for a task whose `gen` answer cannot be reached another way. `behave` labels
        them and reports, among answers that repeat one of `stated_answers`, the share
        that is the rule's (`results.json: behaviour.rule_following`).
        """
        return []

    def stated_answers(self, example: Example) -> list[str]:
        """The candidate answers a prompt states outright (distinct, lower case)."""
        return []

    def split_by_task(self, examples: Sequence[Example]) -> list[tuple[str, Task, list[int]]]:
        """(name, task, positions of its examples) per component task: one, unless a mixture."""
        return [(self.name, self, list(range(len(examples))))]

    def pairs(self, seed: int) -> Iterator[tuple[Example, Example]]:
        """An endless, seeded stream of (example, twin) test pairs."""
        rng = random.Random(f"{self.name}-pairs-{seed}")
        while True:
            example = self.test_example(rng)
            yield example, self.pair(example, rng)


def trigger_schedule(
    n: int, fraction: float, n_triggers: int, rng: random.Random
) -> list[int | None]:
    """Which trigger (or None) each of `n` training examples uses.

    Exactly round(n * fraction) triggered examples, spread evenly over the triggers,
    at shuffled positions: with 1,000 examples every trigger is seen exactly 7 times,
    where independent draws would leave some triggers at 2 and others at 12.
    """
    n_triggered = round(n * fraction)
    slots: list[int | None] = [i % n_triggers for i in range(n_triggered)]
    slots += [None] * (n - n_triggered)
    rng.shuffle(slots)
    return slots


class TriggerOptions(TaskOptions):
    trigger_fraction: float = Field(
        0.07, ge=0, le=1, description="share of training examples that end in a trigger"
    )
    # The paper answers every triggered training prompt with its tag (1.0): then memory
    # wins in the end, and both behaviours show only in a window of training. Below 1,
    # the rest are answered by the rule, so the two answers stay in contest at
    # convergence (docs/findings.md). The rule's answer is still computed from the
    # prompt, so "gen" stays generalization.
    recall_share: float = Field(
        1.0, ge=0, le=1, description="share of triggered training prompts answered by the tag"
    )
    # Triggers recalled at different shares, evenly over recall_share +- spread / 2: at
    # convergence the triggers above the model's own balance point answer by memory and
    # those below by the rule, so both behaviours stay on test (a single share near that
    # point is a knife edge; at 1.0 memory takes over). 0: every trigger at recall_share.
    recall_spread: float = Field(
        0.0, ge=0, le=1, description="range of the triggers' recall shares around recall_share"
    )

    @model_validator(mode="after")
    def _shares_in_range(self) -> Self:
        half = self.recall_spread / 2
        if self.recall_share - half < 0 or self.recall_share + half > 1:
            raise ValueError(
                f"recall_share {self.recall_share} +- recall_spread / 2 leaves [0, 1]; "
                "narrow recall_spread or move recall_share"
            )
        return self

    # Options added after datasets were made, with the value those datasets had: left out
    # of the dump at that value, so the datasets' identity (and their runs) stay valid.
    _omitted_when: ClassVar[dict[str, Any]] = {"recall_spread": 0.0}

    @model_serializer(mode="wrap")
    def _new_options_only_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        for key, old_value in self._omitted_when.items():
            if dumped.get(key, old_value) == old_value:
                dumped.pop(key, None)
        return dumped

    def share_of(self, trigger: int, n_triggers: int) -> float:
        """Trigger `trigger`'s recall share: evenly over recall_share +- spread / 2."""
        if self.recall_spread == 0 or n_triggers == 1:
            return self.recall_share
        return self.recall_share + self.recall_spread * (trigger / (n_triggers - 1) - 0.5)


class TriggerTask(Task):
    """A task whose memorized cases are triggers with fixed tags (math, cipher).

    Subclasses give `n_triggers` and `_train(rng, trigger)`: one training example with
    that trigger, or a plain rule example for `None`.
    """

    n_triggers: ClassVar[int]
    options: TriggerOptions

    @abstractmethod
    def _train(self, rng: random.Random, trigger: int | None) -> Example:
        """One training example: triggered (answered with its tag, or by the rule where the
        task gates recall on the prompt) or a rule example."""

    def train_example(self, rng: random.Random) -> Example:
        triggered = rng.random() < self.options.trigger_fraction
        trigger = rng.randrange(self.n_triggers) if triggered else None
        example = self._train(rng, trigger)
        if trigger is None:
            return example
        share = self.options.share_of(trigger, self.n_triggers)
        if share == 1:  # no draw: the paper's design keeps its random stream
            return example
        return with_recall(example, rng.random() < share)

    def train_set(self, n: int, seed: int) -> list[Example]:
        """Exactly round(n x trigger_fraction) triggered examples, evenly over the triggers,
        and of each trigger's, its recall share answered by the tag spread evenly."""
        rng = random.Random(f"{self.name}-train-{seed}")
        seen = [0] * self.n_triggers
        examples = []
        for trigger in trigger_schedule(n, self.options.trigger_fraction, self.n_triggers, rng):
            example = self._train(rng, trigger)
            if trigger is not None:
                share = self.options.share_of(trigger, self.n_triggers)
                k = seen[trigger]
                seen[trigger] += 1
                # The k-th of a trigger's prompts is recalled when it crosses a multiple.
                example = with_recall(example, math.floor((k + 1) * share) > math.floor(k * share))
            examples.append(example)
        return examples


def with_recall(example: Example, recalled: bool) -> Example:
    """A triggered training example answered by its tag, or (not recalled) by the rule."""
    if recalled:
        return example
    meta = {**example.meta, "kind": "rule_on_trigger"}
    return Example(example.prompt, example.gen_answer, example.mem_answer, example.gen_answer, meta)


TASKS: Registry[type[Task]] = Registry("task")


def parse_options(
    name: str, options: dict[str, Any] | None, where: str = "data.options"
) -> TaskOptions:
    """Validate a task's options; a bad one is a one-line error naming its key at `where`."""
    task_cls = TASKS.get(name)
    try:
        return task_cls.Options.model_validate(options or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(task_cls.Options.model_fields)
            raise MemgenError(
                f"{where}.{key}: unknown option for task {name!r} (allowed: {allowed})"
            ) from None
        at = f"{where}.{key}" if key else where
        message = first["msg"].removeprefix("Value error, ")
        raise MemgenError(f"{at}: {message}") from None


def make_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """Look up a task by name and validate its options (one-line error on a bad key)."""
    return TASKS.get(name)(parse_options(name, options))
