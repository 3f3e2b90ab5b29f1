"""The answer readout: at each layer, how strongly the logit lens prefers the memorized answer.

    from memgen.record.readout import answer_margins, first_tokens
    mem_ids, gen_ids = first_tokens(tokenizer, mem_answers), first_tokens(tokenizer, gen_answers)
    margins = answer_margins(model, resid, mem_ids, gen_ids)  # [N, n_layers]

The logit lens reads a layer's residual stream through the model's final norm and
unembedding, as if that layer were the last. For each prompt it compares two logits,
the first token of the memorized answer and the first token of the rule's answer;
the margin is the first minus the second, so a margin above 0 leans memorization.

Unlike a probe, the readout learns nothing, and its direction is each prompt's own
(the difference of its two answers' unembedding rows). When the two behaviours are a
contest between prompt-specific tokens (color: which colour wins), a layer can have
decided the behaviour while no direction shared by all prompts separates mem from
gen; the readout tells these cases apart. At the last layer the margin's sign is the
greedy choice between the two answers' first tokens, so it matches the label by
construction. Prompts whose two answers start with the same token get NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.core.modeling import unwrap
from memgen.core.sites import final_norm

log = logging.getLogger(__name__)


def first_tokens(tokenizer: PreTrainedTokenizerBase, answers: Sequence[str]) -> np.ndarray:
    """The id each answer starts with when tokenized as a completion; -1 for an empty one."""
    ids = [tokenizer(answer, add_special_tokens=False)["input_ids"][:1] for answer in answers]
    return np.array([row[0] if row else -1 for row in ids], dtype=np.int64)


def warn_if_first_tokens_agree(
    tokenizer: PreTrainedTokenizerBase, mem_ids: np.ndarray, gen_ids: np.ndarray, stage: str
) -> int:
    """Warn (and return how many) where a prompt's two answers start with the same token
    (`mem_ids`, `gen_ids`: each answer's first token, from `first_tokens`).

    The readout, attribution, masks, fitted shifts and specificity's margins all compare
    the two answers' first tokens. A pretrained tokenizer can split both answers after a
    shared piece (SmolLM2 reads math's `<mem-...>` and `<scratch>` as `<` + ...): the
    behaviour is then decided at a later token, and those measures see no difference.
    """
    same = (mem_ids == gen_ids) & (mem_ids >= 0)
    if same.any():
        log.warning(
            "%s: on %d of %d prompts the memorized and the rule's answer both start with "
            "token %r: first-token fits and margins (fitted steering, specificity, "
            "attribution, masks, the readout) cannot tell them apart there; a tokenizer "
            "that gives the two answers different first tokens can",
            stage, int(same.sum()), len(same), tokenizer.decode([int(mem_ids[same][0])]),
        )  # fmt: skip
    return int(same.sum())


def warn_if_first_tokens_agree_on(
    tokenizer: PreTrainedTokenizerBase, labelled: Sequence[tuple[Example, str]], stage: str
) -> int:
    """`warn_if_first_tokens_agree` on `behave`'s labelled test answers whose memorized and
    rule answers differ."""
    both = [ex for ex, _ in labelled if ex.mem_answer and ex.gen_answer != ex.mem_answer]
    mem = first_tokens(tokenizer, [ex.mem_answer for ex in both])
    gen = first_tokens(tokenizer, [ex.gen_answer for ex in both])
    return warn_if_first_tokens_agree(tokenizer, mem, gen, stage)


@torch.no_grad()
def answer_margins(
    model: torch.nn.Module,
    resid: np.ndarray,
    mem_ids: np.ndarray,
    gen_ids: np.ndarray,
    batch_size: int = 256,
) -> np.ndarray:
    """float32 [N, n_layers]: logit-lens logit of the mem answer minus the gen answer's.

    `resid` is the recorded residual stream at the last prompt token, [N, n_layers, width];
    `mem_ids` and `gen_ids` are each row's first answer tokens (`first_tokens`).
    """
    if resid.ndim != 3 or not len(resid) == len(mem_ids) == len(gen_ids):
        raise MemgenError(
            f"resid {resid.shape} needs one mem and one gen token per row "
            f"(got {len(mem_ids)} and {len(gen_ids)})"
        )
    unembed = unwrap(model).get_output_embeddings()
    if unembed is None:
        raise MemgenError(f"{type(unwrap(model)).__name__} has no output embeddings to read with")
    norm = final_norm(model)
    parameter = next(model.parameters())
    mem_ids, gen_ids = np.asarray(mem_ids, np.int64), np.asarray(gen_ids, np.int64)
    rows = np.flatnonzero((mem_ids != gen_ids) & (mem_ids >= 0) & (gen_ids >= 0))
    margins = np.full(resid.shape[:2], np.nan, dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        mem = torch.from_numpy(mem_ids[batch]).to(parameter.device)[:, None]
        gen = torch.from_numpy(gen_ids[batch]).to(parameter.device)[:, None]
        for layer in range(resid.shape[1]):
            # One layer at a time: [batch, vocabulary] logits stay small for 128k vocabularies.
            hidden = torch.from_numpy(np.asarray(resid[batch, layer], dtype=np.float32))
            logits = unembed(norm(hidden.to(parameter.device, parameter.dtype))).float()
            margin = logits.gather(-1, mem) - logits.gather(-1, gen)
            margins[batch, layer] = margin[:, 0].cpu().numpy()
    return margins
