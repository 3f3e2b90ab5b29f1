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


def read_labelled(path: Path) -> list[tuple[Example, Behaviour]]:
    """`behave`'s labelled test answers (`test_outputs.jsonl`): (example, label) per row."""
    if not path.is_file():
        raise MemgenError(f"{path} does not exist; run `memgen behave` first")
    with path.open() as handle:
        rows = [json.loads(line) for line in handle]
    return [(Example.from_dict(row["example"]), row["label"]) for row in rows]
