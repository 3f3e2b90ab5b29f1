"""Generate answers for many prompts and label them with the task's labeller."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.config import BehaveConfig
from memgen.core.generation import generate
from memgen.tasks.base import Behaviour, Example, Task


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


def label_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    cfg: BehaveConfig,
    *,
    chat: bool,
    progress: bool = False,
) -> list[Labelled]:
    outputs = generate(
        model,
        tokenizer,
        [ex.prompt for ex in examples],
        max_new_tokens=cfg.max_new_tokens or task.max_new_tokens,
        num_beams=cfg.num_beams,
        batch_size=cfg.batch_size,
        chat=chat,
        progress=progress,
    )
    return [
        Labelled(ex, out, task.label(ex, out)) for ex, out in zip(examples, outputs, strict=True)
    ]
