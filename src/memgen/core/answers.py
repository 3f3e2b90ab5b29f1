"""Teacher-forced answers: does greedy decoding write this answer? One forward pass.

    hits = greedy_writes(model, tokenizer, examples, chat)   # [N] bool, per completion

Greedy decoding writes an answer and stops exactly when every answer token, and the end
token after it, is the argmax after the tokens before it; so one teacher-forced forward
pass over prompt + answer + end token says what a whole `generate` call would, without
decoding token by token (`memgen.core.reading` answers prompts that way). Also the pieces
training shares: the right-padded answer batch, and logits only where a loss or a check
reads them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.examples import Example
from memgen.core.generation import encode_example

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


def answer_loss(
    model: torch.nn.Module,
    split: tuple[torch.nn.Module, torch.nn.Module] | None,
    batch: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Mean cross-entropy of an `answer_batch`'s answer tokens (the causal LM loss), with
    the logits made only where they are read (`logits_where`)."""
    targets = batch["labels"][:, 1:]
    scored = targets != -100
    logits = logits_where(model, split, batch["input_ids"], batch["attention_mask"], scored)
    return torch.nn.functional.cross_entropy(logits.float(), targets[scored])


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
    Hooks act at every position (a deletion), as they would while generating. Under a
    launcher each process checks every Nth batch.
    """
    model.eval()
    split = decoder_and_head(model)

    def hits(batch: dict[str, torch.Tensor]) -> np.ndarray:
        labels = batch["labels"][:, 1:]
        scored = labels != -100
        said = logits_where(model, split, batch["input_ids"], batch["attention_mask"], scored)
        ok = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        ok[scored.nonzero()[:, 0][said.argmax(-1) != labels[scored]]] = False
        return ok.cpu().numpy()

    batches = answer_batches(model, tokenizer, examples, chat, batch_size)
    found = list(distributed.parallel_map(hits, batches))
    return np.concatenate(found) if found else np.zeros(0, dtype=bool)


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
