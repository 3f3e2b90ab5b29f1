"""Steered answers read teacher-forced: what greedy decoding writes under each shift.

    outputs = read_shifted(model, tokenizer, examples, shifts, "resid", "last", ...)
    outputs[k][i]                     # = generate_shifted(...)[k][i], mostly without decoding

Under a shift at the last position of every forward pass ("last"), greedy generation feeds
the prompt's last token and then each token it writes, each shifted; so the teacher-forced
pass of `memgen.core.reading`, which feeds exactly those tokens on the prompt's cached
prefix, reads what generation writes when every fed position is shifted ("prompt": the
first of them only). Each shift is one variant of that pass, its rows side by side; the
(shift, prompt) answers that are neither the rule's nor the memorized one are generated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.examples import Example
from memgen.core.hooks import Position
from memgen.core.reading import read_greedy
from memgen.core.sites import SiteKind
from memgen.steering.shifts import RowShifts, generate_shifted, steered_layers


class _Shifted:
    """The shifts as `Variants`: row r of a pass takes shift rows[r], where generation would."""

    def __init__(self, shifter: RowShifts, table: torch.Tensor) -> None:
        self.shifter, self.table = shifter, table

    @property
    def count(self) -> int:
        return len(self.table)

    def apply(self, rows: list[int], fed: torch.Tensor) -> None:
        self.shifter.rows = self.table[rows]
        first = torch.zeros_like(fed)
        first[:, 0] = True  # the prompt's last token
        self.shifter.where = fed if self.shifter.position == "last" else first

    def clear(self) -> None:
        self.shifter.rows = None


def read_shifted(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    shifts: np.ndarray,
    kind: SiteKind,
    position: Position,
    *,
    max_new_tokens: int,
    batch_size: int = 128,
    chat: bool = False,
) -> list[list[str]]:
    """outputs[k][i]: what greedy decoding writes for examples[i] with shifts[k] added, the
    same texts as `generate_shifted` (tested), read teacher-forced where it can be."""
    device = next(model.parameters()).device
    table = torch.as_tensor(np.asarray(shifts, dtype=np.float32), device=device)
    shifter = RowShifts(kind, steered_layers(shifts), position)
    with shifter.attached(model):
        outputs = read_greedy(
            model, tokenizer, examples, max_new_tokens=max_new_tokens, chat=chat,
            batch_size=batch_size, variants=_Shifted(shifter, table),
        )  # fmt: skip
    rest = [(k, i) for k, row in enumerate(outputs) for i, out in enumerate(row) if out is None]
    if rest:
        generated = generate_shifted(
            model, tokenizer, [ex.prompt for ex in examples], shifts, kind, position,
            max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat, items=rest,
        )  # fmt: skip
        for k, i in rest:
            outputs[k][i] = generated[k][i]
    return [[out or "" for out in row] for row in outputs]
