"""Teacher-forced answers: does greedy decoding write this answer? One forward pass.

    hits = greedy_writes(model, tokenizer, examples, chat)   # [N] bool, per completion
    outputs = greedy_outputs(model, tokenizer, examples, max_new_tokens=20, chat=False)

Greedy decoding writes an answer and stops exactly when every answer token, and the end
token after it, is the argmax after the tokens before it; so one teacher-forced forward
pass over prompt + answer + end token says what a whole `generate` call would, without
decoding token by token. `greedy_outputs` uses that to answer prompts whose greedy answer
is the memorized or the rule's one (most of them, on a trained model), and generates the
rest: the same texts `generate` gives, at the cost of a forward pass or two (tested against
`generate`; `benchmarks/stages.py` counts the agreement on the recipe's model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.examples import Behaviour, Example, Labelled
from memgen.core.generation import encode_example, generate

# Families whose logits are exactly `head(decoder(x).last_hidden_state)`.
_LINEAR_HEAD = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox"}


def decoder_and_head(lm: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The decoder and the linear output head of `lm`, or None where the head does more
    than a linear map (logit soft-capping, scaling): then only the full logits are right."""
    base = lm.get_base_model() if isinstance(lm, PeftModel) else lm
    if not isinstance(base, PreTrainedModel) or base.config.model_type not in _LINEAR_HEAD:
        return None
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or decoder is base or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def logits_where(
    lm: torch.nn.Module,
    split: tuple[torch.nn.Module, torch.nn.Module] | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scored: torch.Tensor,
) -> torch.Tensor:
    """[n_scored, vocab]: the logits that predict each token where `scored` [B, T-1] is
    true (position t predicts token t + 1). With `split`, the output head runs only there:
    on a pretrained model it is a vocabulary-wide matmul at every position otherwise."""
    if split is None:
        logits: torch.Tensor = lm(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[:, :-1][scored]
    decoder, head = split
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    out: torch.Tensor = head(hidden[:, :-1][scored])
    return out


def answer_batch(
    encoded: Sequence[tuple[list[int], list[int]]],
    rows: Sequence[int],
    pad_id: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Right-padded (ids, labels) rows: positions start at 0 in every row, as in unpadded
    generation."""
    width = max(len(encoded[i][0]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, i in enumerate(rows):
        seq, lab = encoded[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(seq)] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
    }


def answer_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    chat: bool,
    batch_size: int = 32,
) -> list[dict[str, torch.Tensor]]:
    """Prompt + completion + end token, right-padded on the model's device, labels on the
    answer only, as training sees them."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_example(tokenizer, ex, chat, "answer") for ex in examples]
    return [
        answer_batch(encoded, range(a, min(a + batch_size, len(encoded))), pad, device)
        for a in range(0, len(encoded), batch_size)
    ]


@torch.no_grad()
def _greedy_paths(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    chat: bool,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per example: whether greedy decoding writes its `completion` and the end token, and
    the first token greedy decoding writes (-1 for an empty completion)."""
    model.eval()
    split = decoder_and_head(model)

    def paths(batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        labels = batch["labels"][:, 1:]
        scored = labels != -100
        said = logits_where(
            model, split, batch["input_ids"], batch["attention_mask"], scored
        ).argmax(-1)
        row_of = scored.nonzero()[:, 0]  # row of each scored position, in row order
        ok = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        ok[row_of[said != labels[scored]]] = False
        first = torch.full((len(labels),), -1, dtype=torch.long, device=labels.device)
        starts = torch.searchsorted(row_of, torch.arange(len(labels), device=labels.device))
        has = starts < len(row_of)
        first[has] = said[starts[has]]
        return ok.cpu().numpy(), first.cpu().numpy()

    batches = answer_batches(model, tokenizer, examples, chat, batch_size)
    found = list(distributed.parallel_map(paths, batches))
    if not found:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    return np.concatenate([ok for ok, _ in found]), np.concatenate([f for _, f in found])


def greedy_writes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    chat: bool,
    batch_size: int = 64,
) -> np.ndarray:
    """Per example: whether greedy decoding writes its `completion` and then the end token.

    Teacher-forced: every answer token must be the argmax after the ones before it, which
    is exactly when greedy generation writes that answer; one forward pass, no decoding.
    Under a launcher each process checks every Nth batch.
    """
    return _greedy_paths(model, tokenizer, examples, chat, batch_size)[0]


# Generation settings under which greedy decoding is no longer the argmax of the logits.
_PROCESSED = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": None,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
}


def plain_greedy(model: torch.nn.Module) -> bool:
    """Whether `generate(do_sample=False)` on `model` takes the argmax of its logits: no
    penalty, ban or forced token in its generation config (then answers are generated)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    return all(getattr(config, name, plain) in (plain, None) for name, plain in _PROCESSED.items())


@dataclass
class _Reading:
    """What the teacher-forced passes have found so far, per example."""

    outputs: list[str | None]  # the greedy answer, once read
    first: list[int | None]  # the first token greedy writes, once a pass has seen it

    def still_possible(self, row: int, ids: list[int], budget: int) -> bool:
        """Could greedy decoding write `ids` and stop, within `budget` new tokens?"""
        unread = self.outputs[row] is None and 0 < len(ids) < budget
        return unread and self.first[row] in (None, ids[0])


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
    """What greedy `generate` answers each example, without decoding where it can be read.

    The rule's answer is checked teacher-forced on every prompt (`greedy_writes`); the
    memorized answer only where greedy decoding starts with its first token; the prompts
    whose greedy answer is neither (or too long for the budget) are generated.
    """
    reading = _Reading([None] * len(examples), [None] * len(examples))
    for answer_of in (lambda ex: ex.gen_answer, lambda ex: ex.mem_answer):
        todo = []
        for row, ex in enumerate(examples):
            answer = answer_of(ex)
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
            if reading.still_possible(row, ids, max_new_tokens):
                todo.append((row, dataclasses.replace(ex, completion=answer), ids))
        if not todo:
            continue
        hits, first = _greedy_paths(model, tokenizer, [ex for _, ex, _ in todo], chat, batch_size)
        for (row, _, ids), hit, token in zip(todo, hits, first, strict=True):
            reading.first[row] = int(token)
            if hit:
                reading.outputs[row] = str(tokenizer.decode(ids, skip_special_tokens=True))
    rest = [row for row, out in enumerate(reading.outputs) if out is None]
    generated = (
        generate(
            model,
            tokenizer,
            [examples[row].prompt for row in rest],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            chat=chat,
            progress=progress,
        )
        if rest
        else []
    )
    for row, text in zip(rest, generated, strict=True):
        reading.outputs[row] = text
    return [out or "" for out in reading.outputs]


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
        if decoding.num_beams == 1 and plain_greedy(model):
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
