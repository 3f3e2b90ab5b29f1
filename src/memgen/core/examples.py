"""The data every stage hands on: examples, behaviour labels and their JSONL files.

    from memgen.core.examples import Example, read_jsonl, write_jsonl

Tasks make `Example`s; `data` writes them, `train` and `behave` read them. They live in
`core` so that no stage imports a task module, or another stage's, to read a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from memgen.core.errors import MemgenError

# The files `data` and `behave` write, named once: their writers and readers use these.
Split = Literal["train", "dev", "test"]
TEST_ANSWERS_FILE = "test_outputs.jsonl"  # behave: every test prompt, its answer and label
PAIRS_FILE = "pairs.jsonl"  # behave: two rows per flipped pair
PAIR_LABELS = {"mem": 1, "gen": 0}  # the 0/1 labels of recorded pair rows

Behaviour = Literal["mem", "gen", "other"]
BEHAVIOURS: tuple[Behaviour, ...] = ("gen", "mem", "other")


@dataclass(frozen=True)
class Example:
    """One prompt with the answer each strategy would give.

    `completion` is the training target; on test examples it is the rule's answer.
    """

    prompt: str
    completion: str
    mem_answer: str
    gen_answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def answer(self, behaviour: str) -> str:
        """The answer `behaviour` gives: the rule's for "gen", the memorized one otherwise."""
        return self.gen_answer if behaviour == "gen" else self.mem_answer

    def other_answer(self, behaviour: str) -> str:
        """The other behaviour's answer: what steering toward `behaviour` steers away from."""
        return self.mem_answer if behaviour == "gen" else self.gen_answer

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Example:
        return cls(**row)


def write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as handle:
        for example in examples:
            handle.write(example.to_json() + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[Example]:
    if not path.is_file():
        raise MemgenError(f"{path} does not exist; run `memgen data` first")
    examples = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            try:
                examples.append(Example.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise MemgenError(
                    f"{path}:{number} is not an example ({exc}); regenerate with `memgen data`"
                ) from None
    return examples


@dataclass(frozen=True)
class Labelled:
    example: Example
    output: str
    label: Behaviour

    def to_row(self) -> dict[str, object]:
        return {
            "prompt": self.example.prompt,
            "output": self.output,
            "label": self.label,
            "mem_answer": self.example.mem_answer,
            "gen_answer": self.example.gen_answer,
            "example": vars(self.example),
        }


def split_path(data_dir: Path, split: Split) -> Path:
    """Where `data` writes a split: `<run>/data/<split>.jsonl`."""
    return data_dir / f"{split}.jsonl"


def read_split(data_dir: Path, split: Split) -> list[Example]:
    return read_jsonl(split_path(data_dir, split))


def read_test_answers(behave_dir: Path) -> list[tuple[Example, Behaviour]]:
    """`behave`'s labelled test answers: (example, label) per test prompt, in order."""
    return read_labelled(behave_dir / TEST_ANSWERS_FILE)


def read_labelled(path: Path) -> list[tuple[Example, Behaviour]]:
    """`behave`'s labelled test answers (`test_outputs.jsonl`): (example, label) per row."""
    if not path.is_file():
        raise MemgenError(f"{path} does not exist; run `memgen behave` first")
    with path.open() as handle:
        rows = [json.loads(line) for line in handle]
    return [(Example.from_dict(row["example"]), row["label"]) for row in rows]


@dataclass(frozen=True)
class PairRows:
    """The rows of `behave/pairs.jsonl`, column by column (labels: 1 mem / 0 gen)."""

    prompts: list[str]
    labels: list[int]
    pair_ids: list[int]
    # None when a row lacks them (a pairs file written by hand); the readout is skipped.
    answers: tuple[list[str], list[str]] | None


def read_pairs(path: Path) -> PairRows:
    """Read and check `behave/pairs.jsonl` (`PAIRS_FILE`)."""
    if not path.is_file():
        raise MemgenError(f"{path} does not exist; run `memgen behave` first")
    prompts, labels, pair_ids = [], [], []
    mem_answers: list[str | None] = []
    gen_answers: list[str | None] = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            try:
                row: dict[str, Any] = json.loads(line)
                label, prompt, pair_id = row["label"], row["prompt"], int(row["pair_id"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise MemgenError(
                    f"{path}:{number} is not a pair row ({exc!r}); re-run `memgen behave --force`"
                ) from None
            if label not in PAIR_LABELS:
                raise MemgenError(
                    f"{path}:{number}: label {label!r} is not mem or gen; "
                    "re-run `memgen behave --force`"
                )
            prompts.append(str(prompt))
            labels.append(PAIR_LABELS[label])
            pair_ids.append(pair_id)
            mem_answers.append(row.get("mem_answer"))
            gen_answers.append(row.get("gen_answer"))
    if not prompts:
        raise MemgenError(f"{path} has no pairs; run `memgen behave` with more behave.max_pairs")
    mems = [a for a in mem_answers if isinstance(a, str)]
    gens = [a for a in gen_answers if isinstance(a, str)]
    answers = (mems, gens) if len(mems) == len(gens) == len(prompts) else None
    return PairRows(prompts, labels, pair_ids, answers)
