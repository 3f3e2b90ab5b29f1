"""What the steering stages share: the two directions, the split and the test bench.

from memgen.steering.bench import DIRECTIONS, Bench, tuning_and_held_out
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.config import RunConfig
from memgen.core.examples import Example
from memgen.core.hooks import Position
from memgen.core.reading import readable
from memgen.core.rows import Direction
from memgen.core.sites import SiteKind
from memgen.steering.methods import Toward
from memgen.steering.read import read_shifted
from memgen.steering.shifts import generate_shifted
from memgen.tasks.base import Task

# direction -> (behaviour of the prompts steered, behaviour steered toward)
DIRECTIONS: dict[Direction, tuple[str, Toward]] = {
    "mem_to_gen": ("mem", "gen"),
    "gen_to_mem": ("gen", "mem"),
}


def tuning_and_held_out(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into a first half (tuning, fitting) and a held-out half."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


@dataclass
class Bench:
    """Runs K shifts at once on a set of prompts and labels what each makes."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: Task
    cfg: RunConfig
    kind: SiteKind

    def outputs(
        self, examples: Sequence[Example], shifts: np.ndarray, position: Position
    ) -> list[list[str]]:
        """outputs[k][i]: the answer to examples[i] under shifts[k]; greedy answers are read
        teacher-forced where they can be (`memgen.steering.read`), the same texts."""
        if not examples:
            return [[] for _ in shifts]
        budget = self.cfg.behave.max_new_tokens or self.task.max_new_tokens
        if readable(self.model, self.cfg.behave.num_beams):
            return read_shifted(
                self.model,
                self.tokenizer,
                examples,
                shifts,
                self.kind,
                position,
                max_new_tokens=budget,
                batch_size=self.cfg.steer.batch_size,
                chat=self.cfg.train.chat,
            )
        return generate_shifted(
            self.model,
            self.tokenizer,
            [ex.prompt for ex in examples],
            shifts,
            self.kind,
            position,
            max_new_tokens=budget,
            num_beams=self.cfg.behave.num_beams,
            batch_size=self.cfg.steer.batch_size,
            chat=self.cfg.train.chat,
        )

    def labels(
        self, examples: Sequence[Example], shifts: np.ndarray, position: Position
    ) -> list[list[str]]:
        return [
            [self.task.label(ex, out) for ex, out in zip(examples, row, strict=True)]
            for row in self.outputs(examples, shifts, position)
        ]

    def unsteered(self, examples: Sequence[Example]) -> list[str]:
        return self.outputs(examples, np.zeros((1, 1, 1)), "last")[0]  # zeros hook nothing
