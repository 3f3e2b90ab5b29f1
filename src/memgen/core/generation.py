"""Prompt rendering, example encoding and batched generation, shared by training and analysis."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.examples import Example
from memgen.core.modeling import cache_argument


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> str:
    """The text the model sees: the chat template's user turn when asked for and present."""
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)
    return prompt


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> list[int]:
    text = render_prompt(tokenizer, prompt, chat)
    # A chat template already carries its special tokens.
    add_special = not (chat and getattr(tokenizer, "chat_template", None))
    ids: list[int] = tokenizer(text, add_special_tokens=add_special)["input_ids"]
    return ids


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, chat: bool, loss_on: str
) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 = no loss) for prompt + completion + EOS.

    Prompt and completion are tokenized apart, as generation sees them: generation
    starts from exactly the prompt's tokens.
    """
    prompt_ids = encode_prompt(tokenizer, example.prompt, chat)
    answer_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    answer_ids = [*answer_ids, tokenizer.eos_token_id]
    ids = prompt_ids + answer_ids
    labels = list(ids) if loss_on == "sequence" else [-100] * len(prompt_ids) + answer_ids
    return ids, labels


def pad_left(
    sequences: Sequence[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a batch; returns input_ids and attention_mask."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def left_padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: each row's first real token is position 0.

    `generate` derives these itself; a plain forward pass does not, and without them a
    row's positions (and so its activations) would depend on how much padding it got.
    """
    return (mask.cumsum(-1) - 1).clamp(min=0)


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that left padding uses: the pad token, else EOS."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def padded_batches(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    chat: bool,
    batch_size: int,
    device: torch.device,
    desc: str,
    progress: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(rows, input_ids, attention_mask) batches of `prompts`, left-padded.

    Similar lengths go together, which wastes less padding; `rows` are the prompts'
    positions in `prompts`, so callers write results back in input order.
    """
    pad_id = pad_id_of(tokenizer)
    encoded = [encode_prompt(tokenizer, prompt, chat) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=None if progress else True, leave=False):
        rows = order[start : start + batch_size]
        ids, mask = pad_left([encoded[i] for i in rows], pad_id, device)
        yield rows, ids, mask


class _DroppedMaskAlarm(logging.Filter):
    """Drops transformers' "pass an `attention_mask`" warning, which is false here.

    `generate` drops an attention mask of all ones (a batch with no padding) before
    decoding; when a finished row then feeds the pad token back in, the model's own check
    sees a pad token and no mask and warns, though the batch was never padded.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "recommend passing in an `attention_mask`" not in record.getMessage()


@contextmanager
def _quiet_dropped_mask(mask: torch.Tensor) -> Iterator[None]:
    if not bool(mask.all()):  # a padded batch keeps its mask: leave any warning alone
        yield
        return
    source = logging.getLogger("transformers.modeling_utils")
    alarm = _DroppedMaskAlarm()
    source.addFilter(alarm)
    try:
        yield
    finally:
        source.removeFilter(alarm)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    batch_size: int = 128,
    chat: bool = False,
    progress: bool = False,
) -> list[str]:
    """Greedy (or beam) continuations of many prompts, batched with left padding."""
    model.eval()
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(prompts)
    batches = padded_batches(
        tokenizer,
        prompts,
        chat=chat,
        batch_size=batch_size,
        device=device,
        desc="generate",
        progress=progress,
    )

    def answer(batch: tuple[list[int], torch.Tensor, torch.Tensor]) -> tuple[list[int], list[str]]:
        rows, ids, mask = batch
        return rows, generate_batch(model, tokenizer, ids, mask, max_new_tokens, num_beams)

    # Under a launcher each process answers every Nth batch and all receive every answer.
    for rows, texts in distributed.parallel_map(answer, batches):
        for row, text in zip(rows, texts, strict=True):
            outputs[row] = text
    return outputs


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    num_beams: int = 1,
    cache: Any = None,
) -> list[str]:
    """The decoded continuations of one left-padded batch.

    `cache`: a KV cache of the prompts' first tokens (a `DynamicCache`), so generation
    runs only the rest; greedy decoding only.
    """
    extra = {} if cache is None else {cache_argument(model): cache}
    with _quiet_dropped_mask(mask):
        generated = model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            pad_token_id=pad_id_of(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            **extra,
        )
    texts: list[str] = tokenizer.batch_decode(
        generated[:, ids.shape[1] :], skip_special_tokens=True
    )
    return texts
