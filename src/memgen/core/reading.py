"""Greedy answers read teacher-forced instead of decoded, and labelled.

    outputs = greedy_outputs(model, tokenizer, examples, max_new_tokens=20, chat=False)
    labelled = label_examples(model, tokenizer, task, examples, cfg.behave, chat=False)

Greedy decoding writes an answer and stops exactly when, after the prompt, every answer
token and then the end token is the argmax after the tokens before it. So for a prompt
whose greedy answer is its rule's or its memorized answer (most prompts of a trained
model), one pass that feeds the last prompt token and the answer, on the prompt's cached
prefix (`memgen.core.prefix`), gives the text `generate` would: the rule's answer is
checked on every prompt, the memorized one only where greedy decoding starts with its
first token, and the prompts whose answer is neither are generated. The same texts as
`generate` (tested on five families), with one prompt pass and no token-by-token decoding.

`Variants` reads K versions of the model at once, a row each (the steering shifts of
`memgen.steering.read`), on one shared prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.answers import decoder_and_head, plain_greedy
from memgen.core.examples import Behaviour, Example, Labelled
from memgen.core.generation import encode_prompt, generate, pad_id_of, pad_left
from memgen.core.modeling import cache_argument
from memgen.core.prefix import Prefix


class Variants(Protocol):
    """K versions of the model that one teacher-forced pass reads side by side."""

    @property
    def count(self) -> int: ...

    def apply(self, rows: list[int], fed: torch.Tensor) -> None:
        """Before a pass: row r reads version rows[r]; `fed` [rows, width] marks the last
        prompt token and the answer tokens (what generation would feed)."""

    def clear(self) -> None:
        """After a pass, and before the prefix runs: the model as it is."""


class _Plain:
    count = 1

    def apply(self, rows: list[int], fed: torch.Tensor) -> None:
        pass

    def clear(self) -> None:
        pass


def readable(model: torch.nn.Module, num_beams: int) -> bool:
    """Whether answers can be read rather than decoded: greedy decoding (one beam) that
    takes the argmax of the logits (`plain_greedy`)."""
    return num_beams == 1 and plain_greedy(model)


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _answer_inputs(
    model: PreTrainedModel, prefix: Prefix, answers: list[list[int]], eos: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A pass that feeds each row's last prompt token and its answer on `prefix`: `fed`
    [rows, width] (the positions fed), `wanted` (the token greedy decoding must write after
    each: the answer's next, then the end token) and the model's inputs."""
    device = prefix.ids.device
    width = 1 + max(len(ids) for ids in answers)
    fed_ids = torch.full((len(answers), width), pad, dtype=torch.long)
    wanted = torch.full((len(answers), width), -100, dtype=torch.long)
    for row, ids in enumerate(answers):
        fed_ids[row, 1 : 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        wanted[row, : len(ids) + 1] = torch.tensor([*ids, eos], dtype=torch.long)
    fed_ids, wanted = fed_ids.to(device), wanted.to(device)
    fed_ids[:, 0] = prefix.ids[:, -1]
    fed = wanted != -100
    inputs = {
        "input_ids": fed_ids,
        "attention_mask": torch.cat([prefix.mask[:, :-1], fed.long()], dim=1),
        "position_ids": prefix.positions[:, -1:] + torch.arange(width, device=device),
        "use_cache": True,
        cache_argument(model): prefix.cache(model),
    }
    return fed, wanted, inputs


class _Reader:
    """Reads one chunk of prompts under every variant: {(variant, prompt): text}."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
        variants: Variants,
        *,
        max_new_tokens: int,
        chat: bool,
    ) -> None:
        self.model, self.tokenizer, self.variants = model, tokenizer, variants
        self.budget = max_new_tokens
        self.prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
        self.answers = [
            [_token_ids(tokenizer, ex.gen_answer) for ex in examples],
            [_token_ids(tokenizer, ex.mem_answer) for ex in examples],
        ]
        self.split = decoder_and_head(model)
        self.pad, self.eos = pad_id_of(tokenizer), int(tokenizer.eos_token_id)

    def __call__(self, chunk: list[int]) -> dict[tuple[int, int], str]:
        self.variants.clear()  # the prefix is the prompt before any variant acts
        device = next(self.model.parameters()).device
        prefix = Prefix.of(
            self.model, *pad_left([self.prompts[i] for i in chunk], self.pad, device)
        )
        read: dict[tuple[int, int], str] = {}
        first: dict[tuple[int, int], int] = {}
        for answers in self.answers:  # the rule's answer, then the memorized one
            items = [
                (k, j)
                for j, i in enumerate(chunk)
                for k in range(self.variants.count)
                if (k, i) not in read
                and 0 < len(answers[i]) < self.budget
                and first.get((k, i), answers[i][0]) == answers[i][0]
            ]
            if not items:
                continue
            said = self._pass(prefix.select([j for _, j in items]), [k for k, _ in items],
                              [answers[chunk[j]] for _, j in items])  # fmt: skip
            for (k, j), (hit, token) in zip(items, said, strict=True):
                first[k, chunk[j]] = token
                if hit:
                    ids = answers[chunk[j]]
                    read[k, chunk[j]] = str(self.tokenizer.decode(ids, skip_special_tokens=True))
        return read

    def _pass(
        self, prefix: Prefix, rows: list[int], answers: list[list[int]]
    ) -> list[tuple[bool, int]]:
        """Per row: greedy writes its answer and the end token (under its variant), and the
        first token greedy writes."""
        fed, wanted, inputs = _answer_inputs(self.model, prefix, answers, self.eos, self.pad)
        self.variants.apply(rows, fed)
        try:
            with torch.no_grad():
                if self.split is None:
                    logits = self.model(**inputs).logits[fed]  # type: ignore[call-overload]
                else:
                    decoder, head = self.split
                    logits = head(decoder(**inputs).last_hidden_state[fed])  # type: ignore[call-overload]
        finally:
            self.variants.clear()
        said = logits.argmax(-1)
        row_of = fed.nonzero()[:, 0]  # rows in order, one entry per fed position
        ok = torch.ones(len(rows), dtype=torch.bool, device=said.device)
        ok[row_of[said != wanted[fed]]] = False
        first = said[torch.searchsorted(row_of, torch.arange(len(rows), device=said.device))]
        return list(zip(ok.tolist(), first.tolist(), strict=True))


def read_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    chat: bool,
    batch_size: int = 128,
    variants: Variants | None = None,
) -> list[list[str | None]]:
    """outputs[k][i]: the greedy answer to examples[i] under variant k where it is the rule's
    or the memorized answer (read teacher-forced), else None. Under a launcher each process
    reads every Nth chunk of prompts."""
    model.eval()
    versions = variants or _Plain()
    reader = _Reader(model, tokenizer, examples, versions, max_new_tokens=max_new_tokens, chat=chat)
    order = sorted(range(len(examples)), key=lambda i: len(reader.prompts[i]))
    per = max(1, batch_size // versions.count)  # prompts per chunk: a row per variant each
    chunks = [order[a : a + per] for a in range(0, len(order), per)]
    outputs: list[list[str | None]] = [[None] * len(examples) for _ in range(versions.count)]
    for found in distributed.parallel_map(reader, chunks):
        for (k, i), text in found.items():
            outputs[k][i] = text
    return outputs


def greedy_outputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    chat: bool,
    batch_size: int = 128,
    progress: bool = False,
) -> list[str]:
    """What greedy `generate` answers each example: read where it can be, else generated."""
    outputs = read_greedy(
        model, tokenizer, examples, max_new_tokens=max_new_tokens, chat=chat, batch_size=batch_size
    )[0]
    rest = [i for i, out in enumerate(outputs) if out is None]
    if rest:
        generated = generate(
            model,
            tokenizer,
            [examples[i].prompt for i in rest],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            chat=chat,
            progress=progress,
        )
        for i, text in zip(rest, generated, strict=True):
            outputs[i] = text
    return [out or "" for out in outputs]


class Decoding(Protocol):
    """How to generate answers: `behave`'s config section, or training's `Decoder`."""

    @property
    def num_beams(self) -> int: ...  # 1 = greedy

    @property
    def max_new_tokens(self) -> int: ...  # 0 = the task's own budget

    @property
    def batch_size(self) -> int: ...


class Labeller(Protocol):
    """What `label_examples` needs of a task: its answer budget, its labeller and its parts."""

    @property
    def max_new_tokens(self) -> int: ...

    def label(self, example: Example, output: str) -> Behaviour: ...

    def split_by_task(
        self, examples: Sequence[Example]
    ) -> Sequence[tuple[str, Any, list[int]]]: ...


def label_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Labeller,
    examples: Sequence[Example],
    decoding: Decoding,
    *,
    chat: bool,
    progress: bool = False,
) -> list[Labelled]:
    """Answer each prompt as `decoding` says and label the answer with the task's labeller.

    Greedy answers are read teacher-forced where they can be (`greedy_outputs`: the same
    texts, faster); beam search generates. A mixture's examples are answered task by
    task, each within its own task's budget (a colour in 2 tokens, not a scratchpad's
    126), and returned in input order.
    """
    labelled: list[Labelled | None] = [None] * len(examples)
    for _, part, positions in task.split_by_task(examples):
        group = [examples[i] for i in positions]
        budget = decoding.max_new_tokens or part.max_new_tokens
        if readable(model, decoding.num_beams):
            outputs = greedy_outputs(
                model,
                tokenizer,
                group,
                max_new_tokens=budget,
                chat=chat,
                batch_size=decoding.batch_size,
                progress=progress,
            )
        else:
            outputs = generate(
                model,
                tokenizer,
                [ex.prompt for ex in group],
                max_new_tokens=budget,
                num_beams=decoding.num_beams,
                batch_size=decoding.batch_size,
                chat=chat,
                progress=progress,
            )
        for i, output in zip(positions, outputs, strict=True):
            labelled[i] = Labelled(examples[i], output, part.label(examples[i], output))
    return [row for row in labelled if row is not None]
