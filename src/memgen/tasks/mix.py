"""Several tasks in one network ("mix"): one model, one tokenizer, shared neurons.

    memgen run --run-dir runs/mix task=mix 'data.options={tasks: {color: {}, math: {}, cipher: {}}}'

The paper's inter-task claim (the tasks share behaviour neurons) needs one network that
does every task: two networks trained apart have no neuron-to-neuron correspondence.
Training draws each example from one component task (`weights`, equal by default); test,
dev and pair prompts come from every component in equal numbers, each tagged with its
task (`meta["task"]`), and each is labelled by its own task. The training monitor keeps
the checkpoint where the worst component is best (docs/multitask.md), and per-task runs
on the kept model (`train.steps=0`, `memgen compare --shared-units`) measure the overlap.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from memgen.core.errors import MemgenError
from memgen.core.examples import Behaviour, Example
from memgen.tasks.base import TASKS, Task, TaskOptions, TokenizerSpec, parse_options

TASK_KEY = "task"  # the meta key naming an example's component


def _the_paper_tasks() -> dict[str, dict[str, Any]]:
    return {"color": {}, "math": {}, "cipher": {}}


class MixOptions(TaskOptions):
    # Each component's own options, validated by that task and stored with its defaults
    # filled in and in name order: the order fixes the tokenizer's ids, so two spellings
    # of one mixture must not make two models.
    tasks: dict[str, dict[str, Any]] = Field(
        default_factory=_the_paper_tasks,
        validate_default=True,
        description="component task -> its options",
    )
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="share of training examples per task (default equal)"
    )

    @field_validator("tasks")
    @classmethod
    def _components_valid(cls, tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not tasks:
            raise ValueError("name at least one task, e.g. {color: {}, math: {}}")
        if "mix" in tasks:
            raise ValueError("a mixture cannot contain a mixture; list its tasks instead")
        # A bad component option raises the component's own one-line error.
        return {
            name: parse_options(name, tasks[name], f"data.options.tasks.{name}").model_dump(
                mode="json"
            )
            for name in sorted(tasks)
        }

    @model_validator(mode="after")
    def _weights_fit(self) -> MixOptions:
        unknown = sorted(set(self.weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"weights name {unknown}: add them to tasks or drop them")
        if sum(self.shares().values()) == 0:
            raise ValueError("weights are all 0: give some task a positive weight")
        return self

    def shares(self) -> dict[str, float]:
        """Each component's weight (1 where not given), in `tasks` order."""
        return {name: self.weights.get(name, 1.0) for name in self.tasks}


def apportion(n: int, shares: Sequence[float]) -> list[int]:
    """Split n into counts proportional to `shares` that sum to n (largest remainders)."""
    total = sum(shares)
    exact = [n * share / total for share in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _tagged(name: str, example: Example) -> Example:
    return replace(example, meta={**example.meta, TASK_KEY: name})


@TASKS.register("mix")
class MixTask(Task):
    name = "mix"
    Options = MixOptions
    options: MixOptions

    def __init__(self, options: MixOptions | None = None) -> None:
        super().__init__(options)
        self.components: dict[str, Task] = {
            name: TASKS.get(name)(parse_options(name, component_options))
            for name, component_options in self.options.tasks.items()
        }
        # Generation's budget is the longest component's; each part alone uses its own.
        self.max_new_tokens = max(task.max_new_tokens for task in self.components.values())

    def component_of(self, example: Example) -> Task:
        name = example.meta.get(TASK_KEY)
        if name not in self.components:
            raise MemgenError(
                f"an example tagged task={name!r} is not from this mixture "
                f"({', '.join(self.components)}); regenerate the data with `memgen data --force`"
            )
        return self.components[name]

    def split_by_task(self, examples: Sequence[Example]) -> list[tuple[str, Task, list[int]]]:
        positions: dict[str, list[int]] = {name: [] for name in self.components}
        for i, example in enumerate(examples):
            self.component_of(example)  # every example is one of ours
            positions[example.meta[TASK_KEY]].append(i)
        return [(name, self.components[name], rows) for name, rows in positions.items() if rows]

    def train_example(self, rng: random.Random) -> Example:
        shares = self.options.shares()
        name = rng.choices(list(shares), weights=list(shares.values()))[0]
        return _tagged(name, self.components[name].train_example(rng))

    def train_set(self, n: int, seed: int) -> list[Example]:
        """Each component's own training set (its trigger schedule kept), shuffled together."""
        shares = self.options.shares()
        examples = [
            _tagged(name, example)
            for name, count in zip(shares, apportion(n, list(shares.values())), strict=True)
            for example in self.components[name].train_set(count, seed)
        ]
        random.Random(f"{self.name}-train-{seed}").shuffle(examples)
        return examples

    def test_example(self, rng: random.Random) -> Example:
        name = rng.choice(list(self.components))
        return _tagged(name, self.components[name].test_example(rng))

    def _equal_parts(self, n: int) -> Iterator[tuple[str, Task, int]]:
        if n < len(self.components):
            raise MemgenError(
                f"{n} prompts cannot cover the mixture's {len(self.components)} tasks; "
                "raise data.n_test and data.n_dev to a multiple of the number of tasks"
            )
        counts = apportion(n, [1.0] * len(self.components))
        for (name, task), count in zip(self.components.items(), counts, strict=True):
            yield name, task, count

    def test_set(self, n: int, seed: int) -> list[Example]:
        return [
            _tagged(name, example)
            for name, task, count in self._equal_parts(n)
            for example in task.test_set(count, seed)
        ]

    def dev_set(self, n: int, seed: int, test: Iterable[Example]) -> list[Example]:
        test = list(test)
        return [
            _tagged(name, example)
            for name, task, count in self._equal_parts(n)
            for example in task.dev_set(count, seed, test)
        ]

    def rule_check_set(self, n: int, seed: int) -> list[Example]:
        return [
            _tagged(name, example)
            for name, task in self.components.items()
            for example in task.rule_check_set(n, seed)
        ]

    def stated_answers(self, example: Example) -> list[str]:
        return self.component_of(example).stated_answers(example)

    def pair(self, example: Example, rng: random.Random) -> Example:
        name = str(example.meta.get(TASK_KEY))
        return _tagged(name, self.component_of(example).pair(example, rng))

    def pairs(self, seed: int) -> Iterator[tuple[Example, Example]]:
        """The components' pair streams, taken in turn."""
        streams = {name: task.pairs(seed) for name, task in self.components.items()}
        while True:
            for name, stream in streams.items():
                example, twin = next(stream)
                yield _tagged(name, example), _tagged(name, twin)

    def label(self, example: Example, output: str) -> Behaviour:
        return self.component_of(example).label(example, output)

    def tokenizer_spec(self) -> TokenizerSpec:
        return TokenizerSpec.union([task.tokenizer_spec() for task in self.components.values()])
