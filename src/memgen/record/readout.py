"""The answer readout: at each layer, how strongly the logit lens prefers the memorized answer.

    from memgen.record.readout import answer_margins, readout_tokens
    forks = answer_forks(tokenizer, mem_answers, gen_answers)
    margins = answer_margins(model, resid, *readout_tokens(tokenizer, forks))  # [N, n_layers]

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
from memgen.core.forks import Fork, fork_tokens
from memgen.core.modeling import unwrap
from memgen.core.sites import final_norm

log = logging.getLogger(__name__)


def readout_tokens(
    tokenizer: PreTrainedTokenizerBase, forks: Sequence[Fork]
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's memorized and rule answer's first token where they differ there, else -1
    (`forks`: the memorized answers' forks from the rule's, `memgen.core.forks`).

    The lens reads the residual stream at the last prompt token, which predicts the
    answers' first token. Where both answers start with the same tokens (SmolLM2 reads
    math's `<mem-...>` and `<scratch>` as `<` + ...), the behaviour is decided later and
    the readout has nothing to compare: those rows get NaN, and a warning says how many.
    Every other measure of the two answers is taken where they part.
    """
    after = [fork for fork in forks if fork.decides and fork.shared]
    if after:
        log.warning(
            "record: on %d of %d prompts the memorized and the rule's answer both start "
            "with %r; the readout (the logit lens at the last prompt token) is NaN there",
            len(after), len(forks), tokenizer.decode(list(after[0].shared)),
        )  # fmt: skip
    mem, gen = fork_tokens(forks)
    first = np.array([not fork.shared for fork in forks], dtype=bool)
    return np.where(first, mem, -1), np.where(first, gen, -1)


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
    `mem_ids` and `gen_ids` are each row's first answer tokens (`readout_tokens`; -1: NaN).
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
