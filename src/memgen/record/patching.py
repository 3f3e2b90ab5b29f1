"""Exact activation patching per neuron on the flipped pairs: the score attribution estimates.

    scores = patching_scores(model, tokenizer, prompts, pairs, activations, forks, "mlp",
                             chat=False, batch_size=256)   # [L, W]

For a pair (mem member m, gen member g) and a neuron, the answer margin (mem minus gen
logit where the two answers part, as `memgen.record.gradients` defines it) is measured
with the neuron's activation at the last prompt token set to its value in the other member:
in g, set to a_m, the margin rises by d_g; in m, set to a_g, it falls by d_m. The score
is the mean over pairs of (d_g + d_m) / 2, in margin units: exactly what attribution
patching, (a_m - a_g)(g_m + g_g) / 2, estimates to first order. One forward per batch of
neurons of one layer on one prompt: L x W / batch_size forwards per prompt, which every
scratch model affords and a large one does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from memgen.core.forks import Fork, fed_to_fork
from memgen.core.hooks import Edit, edit
from memgen.core.modeling import unwrap
from memgen.core.sites import Site, SiteKind


def _setter(rows: torch.Tensor, values: torch.Tensor, at: int) -> Edit:
    """An edit that sets, in batch row b, neuron rows[b] at position `at` to values[b]."""

    def apply(activation: torch.Tensor) -> torch.Tensor:
        patched = activation.clone()
        patched[torch.arange(len(rows)), at, rows] = values.to(activation.dtype)
        return patched

    return apply


@torch.no_grad()
def _margins(
    model: torch.nn.Module, ids: torch.Tensor, answer: tuple[int, int], edits: Mapping[Site, Edit]
) -> torch.Tensor:
    inner = unwrap(model)
    with edit(model, edits):
        hidden = inner.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
    logits = inner.get_output_embeddings()(hidden).float()
    return logits[:, answer[0]] - logits[:, answer[1]]


def _patched_margins(
    model: torch.nn.Module,
    ids: list[int],
    fork: Fork,
    site: Site,
    neurons: np.ndarray,
    values: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """The margin of one prompt (`ids`, its fork's shared tokens included) with each of
    `neurons` (of `site`) set to its value at the last prompt token."""
    device = next(model.parameters()).device
    out = np.empty(len(neurons))
    for start in range(0, len(neurons), batch_size):
        rows = torch.as_tensor(neurons[start : start + batch_size], device=device)
        batch = torch.tensor([ids] * len(rows), device=device)
        value = torch.as_tensor(values[start : start + batch_size], device=device)
        edits = {site: _setter(rows, value, -1 - len(fork.shared))}
        margins = _margins(model, batch, (fork.token, fork.other), edits)
        out[start : start + len(rows)] = margins.cpu().numpy()
    return out


def patching_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    activations: np.ndarray,
    forks: Sequence[Fork],
    kind: SiteKind,
    *,
    chat: bool,
    batch_size: int,
) -> np.ndarray:
    """float64 [L, W]: each neuron's mean margin change over `pairs` ((mem row, gen row)
    into `activations` [N, L, W], each a row whose `forks` decide: `Fork.decides`)."""
    depth, width = activations.shape[1:]
    chosen = np.arange(depth * width)
    total = np.zeros(depth * width)
    device = next(model.parameters()).device
    model.eval()
    for m, g in tqdm(pairs, desc=f"patching {kind}", disable=None, leave=False):
        for row, donor, sign in ((g, m, 1.0), (m, g, -1.0)):
            # Each member's margin is between its own two answers, as its gradient is.
            fork = forks[row]
            ids = fed_to_fork(tokenizer, [prompts[row]], [fork], chat)[0]
            answer = (fork.token, fork.other)
            base = float(_margins(model, torch.tensor([ids], device=device), answer, {})[0])
            for layer in np.unique(chosen // width):
                flat = chosen[chosen // width == layer]
                values = np.asarray(activations[donor, layer], np.float64)[flat % width]
                patched = _patched_margins(
                    model, ids, fork, Site(kind, int(layer)), flat % width, values, batch_size
                )
                total[flat] += sign * (patched - base) / 2
    scores: np.ndarray = (total / max(1, len(pairs))).reshape(depth, width)
    return scores
