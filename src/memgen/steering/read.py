"""Steered answers read teacher-forced: what greedy decoding writes under each shift.

    outputs = read_shifted(model, tokenizer, examples, shifts, "resid", "last", ...)
    outputs[k][i]                     # = generate_shifted(...)[k][i], mostly without decoding

Under a shift at the last position of every forward pass ("last"), greedy generation feeds
the prompt's last token and then each token it writes, each shifted. So one teacher-forced
pass over [last prompt token, answer tokens], every one of them shifted, on the prompt's
cached prefix, says whether greedy decoding writes that answer and then the end token
("prompt": the first of them shifted only). As `memgen.core.answers.greedy_outputs` does
unsteered: the rule's answer is checked for every (shift, prompt), the memorized one where
greedy decoding starts with its first token, and the rest are generated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.answers import decoder_and_head
from memgen.core.examples import Example
from memgen.core.generation import encode_prompt, pad_id_of, pad_left
from memgen.core.hooks import Position
from memgen.core.modeling import cache_argument
from memgen.core.sites import SiteKind
from memgen.steering.prefix import Prefix
from memgen.steering.shifts import RowShifts, generate_shifted, steered_layers

Item = tuple[int, int, list[int]]  # (shift k, prompt i, answer token ids)


@dataclass(frozen=True)
class _Pass:
    """What one teacher-forced pass needs: the model, its shifter and the encoded prompts."""

    model: PreTrainedModel
    shifter: RowShifts
    table: torch.Tensor  # [K, L, W]
    prompts: list[list[int]]
    pad: int
    eos: int

    @torch.no_grad()
    def __call__(self, chunk: list[Item]) -> tuple[np.ndarray, np.ndarray]:
        """Per item: whether greedy decoding writes its answer and the end token under its
        shift, and the first token it writes."""
        device = self.table.device
        distinct = list(dict.fromkeys(i for _, i, _ in chunk))
        self.shifter.rows = None  # the prefix is unshifted: a shift is at its end only
        prefix = Prefix.of(
            self.model, *pad_left([self.prompts[i] for i in distinct], self.pad, device)
        ).select([distinct.index(i) for _, i, _ in chunk])
        width = 1 + max(len(ids) for _, _, ids in chunk)
        fed = torch.full((len(chunk), width), self.pad, dtype=torch.long)
        wanted = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (_, _, ids) in enumerate(chunk):
            fed[row, 1 : 1 + len(ids)] = torch.tensor(ids)
            wanted[row, : len(ids) + 1] = torch.tensor([*ids, self.eos])
        fed, wanted = fed.to(device), wanted.to(device)
        fed[:, 0] = prefix.ids[:, -1]
        real = wanted != -100  # the last prompt token and the answer: what generation feeds
        said = self._argmax(prefix, fed, real, [k for k, _, _ in chunk])
        ok = torch.ones(len(chunk), dtype=torch.bool, device=device)
        rows_of = real.nonzero()[:, 0]
        ok[rows_of[said != wanted[real]]] = False
        first = said[torch.searchsorted(rows_of, torch.arange(len(chunk), device=device))]
        return ok.cpu().numpy(), first.cpu().numpy()

    def _argmax(
        self, prefix: Prefix, fed: torch.Tensor, real: torch.Tensor, shifts: list[int]
    ) -> torch.Tensor:
        """The greedy token after each `real` position of `fed`, each row under its shift."""
        mask = torch.cat([prefix.mask[:, :-1], real.long()], dim=1)
        steps = torch.arange(fed.shape[1], device=fed.device)
        positions = prefix.positions[:, -1:] + steps
        self.shifter.rows = self.table[shifts]
        self.shifter.where = real if self.shifter.position == "last" else steps[None] == 0
        split = decoder_and_head(self.model)
        inputs = {
            "input_ids": fed,
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": True,
            cache_argument(self.model): prefix.cache(self.model),
        }
        try:
            if split is None:
                return self.model(**inputs).logits[real].argmax(-1)
            decoder, head = split
            return head(decoder(**inputs).last_hidden_state[real]).argmax(-1)
        finally:
            self.shifter.rows = None


def _answers(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], of: Callable[[Example], str]
) -> list[list[int]]:
    return [
        tokenizer(of(ex), add_special_tokens=False)["input_ids"] if of(ex) else []
        for ex in examples
    ]


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
    model.eval()
    prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
    device = next(model.parameters()).device
    table = torch.as_tensor(np.asarray(shifts, dtype=np.float32), device=device)
    shifter = RowShifts(kind, steered_layers(shifts), position)
    run = _Pass(model, shifter, table, prompts, pad_id_of(tokenizer), tokenizer.eos_token_id)
    outputs: list[list[str | None]] = [[None] * len(examples) for _ in shifts]
    first: list[list[int | None]] = [[None] * len(examples) for _ in shifts]
    with shifter.attached(model):
        for of in (lambda ex: ex.gen_answer, lambda ex: ex.mem_answer):
            answers = _answers(tokenizer, examples, of)
            todo = [
                (k, i, answers[i])
                for k in range(len(shifts))
                for i in range(len(examples))
                if outputs[k][i] is None
                and 0 < len(answers[i]) < max_new_tokens
                and first[k][i] in (None, answers[i][0])
            ]
            todo.sort(key=lambda item: (len(prompts[item[1]]), item[1]))
            chunks = [todo[a : a + batch_size] for a in range(0, len(todo), batch_size)]
            for chunk, (hits, said) in zip(
                chunks, distributed.parallel_map(run, chunks), strict=True
            ):
                for (k, i, ids), hit, token in zip(chunk, hits, said, strict=True):
                    first[k][i] = int(token)
                    if hit:
                        outputs[k][i] = str(tokenizer.decode(ids, skip_special_tokens=True))
    rest = [(k, i) for k, row in enumerate(outputs) for i, out in enumerate(row) if out is None]
    if rest:
        generated = generate_shifted(
            model, tokenizer, [ex.prompt for ex in examples], shifts, kind, position,
            max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat, items=rest,
        )  # fmt: skip
        for k, i in rest:
            outputs[k][i] = generated[k][i]
    return [[out or "" for out in row] for row in outputs]
