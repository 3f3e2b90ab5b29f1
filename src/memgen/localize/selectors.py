"""Localization selectors: a score per MLP neuron for how much some answers depend on it.

    scores = SELECTORS.get("attribution")(model, tokenizer, facts, reference, chat)  # [L, W]

Each looks at the answers to localize (`facts`: prompt + answer, teacher-forced) beside
ordinary prompts (`reference`, which give each neuron's usual value), and ranks the
neurons; the top k are the selection. The ablation test (`memgen.localize.test`)
mean-ablates them at every position, so the causal selector estimates exactly that:

- `attribution`: attribution patching (gradient x activation change, first order): per
  neuron, the answer's log-likelihood lost when the neuron is set to its usual value
  at every position, (a - mean) . d log p(answer) / d a, summed over positions and
  averaged over facts. One forward and one backward pass per batch.
- `activation`: how far from its usual value the neuron is on the facts, in its own
  standard deviations (|a - mean| / sd, averaged): the correlational baseline
  (Chang et al.'s ACTIVATIONS).
- `nmd`: the paper's statistic, mean on the facts minus mean on ordinary prompts, in
  absolute value.
- `random`: random scores, the floor every selector must beat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.examples import Example
from memgen.core.generation import encode_example
from memgen.core.hooks import edit
from memgen.core.registry import Registry
from memgen.core.sites import Site, n_layers
from memgen.train.loop import _batch

Selector = Callable[
    [PreTrainedModel, PreTrainedTokenizerBase, Sequence[Example], Sequence[Example], bool, int],
    np.ndarray,
]
SELECTORS: Registry[Selector] = Registry("localization selector")
_BATCH = 32


def _batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    chat: bool,
    device: torch.device,
) -> list[dict[str, torch.Tensor]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_example(tokenizer, ex, chat, "answer") for ex in examples]
    return [
        _batch(encoded, list(range(a, min(a + _BATCH, len(encoded)))), pad, device)
        for a in range(0, len(encoded), _BATCH)
    ]


def _mlp_values(
    model: PreTrainedModel,
    batches: list[dict[str, torch.Tensor]],
    grad: bool = False,
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per batch and layer, the MLP neurons [B, T, W] (and d log p(answer) / d them)."""
    sites = [Site("mlp", layer) for layer in range(n_layers(model))]
    values: list[list[torch.Tensor]] = []
    grads: list[list[torch.Tensor]] = []
    for batch in batches:
        kept: dict[Site, torch.Tensor] = {}

        def keep(site: Site, into: dict[Site, torch.Tensor] = kept) -> Callable[..., None]:
            def hook(activation: torch.Tensor) -> None:
                if grad:
                    activation.retain_grad()
                into[site] = activation

            return hook

        with (
            torch.set_grad_enabled(grad),
            _graph_from_embeddings(model, grad),
            edit(model, {s: keep(s) for s in sites}),
        ):
            out = model(**batch)
            if grad:
                # Summed, not averaged: each fact's log-likelihood counts once.
                tokens = (batch["labels"][:, 1:] != -100).sum()
                (-out.loss * tokens).backward()
        values.append([kept[s].detach() for s in sites])
        if grad:
            grads.append([kept[s].grad for s in sites])  # type: ignore[misc]
    return values, grads


@contextlib.contextmanager
def _graph_from_embeddings(model: PreTrainedModel, grad: bool) -> Iterator[None]:
    """With the weights frozen, nothing needs a gradient: make the token embeddings a leaf
    that does, so every later activation is in one graph (total effects, not direct)."""
    if not grad:
        yield
        return
    handle = model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: output.detach().requires_grad_(True)
    )
    try:
        yield
    finally:
        handle.remove()


def _usual(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, reference: Sequence[Example],
    chat: bool,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each neuron's mean and sd over every real position of the reference prompts."""
    device = next(model.parameters()).device
    batches = _batches(tokenizer, reference, chat, device)
    values, _ = _mlp_values(model, batches)
    width = values[0][0].shape[-1]
    sums = torch.zeros(len(values[0]), width, dtype=torch.float64)
    squares = torch.zeros_like(sums)
    count = 0
    for batch, layers in zip(batches, values, strict=True):
        real = batch["attention_mask"].bool()
        stacked = torch.stack([v[real] for v in layers]).double()  # [L, positions, W]
        sums += stacked.sum(1)
        squares += (stacked * stacked).sum(1)
        count += int(real.sum())
    mean = sums / count
    var = (squares / count - mean * mean).clamp(min=0)
    return mean.numpy(), np.sqrt(var.numpy())


def attribution_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Example],
    reference: Sequence[Example], chat: bool, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    mean, _ = _usual(model, tokenizer, reference, chat)
    device = next(model.parameters()).device
    batches = _batches(tokenizer, facts, chat, device)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        values, grads = _mlp_values(model, batches, grad=True)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    usual = torch.as_tensor(mean, dtype=torch.float32)
    total = torch.zeros_like(usual)
    for batch, layer_values, layer_grads in zip(batches, values, grads, strict=True):
        real = batch["attention_mask"].unsqueeze(-1)
        for layer, (a, g) in enumerate(zip(layer_values, layer_grads, strict=True)):
            # Log-likelihood lost by setting the neuron to its usual value everywhere.
            total[layer] += ((a - usual[layer]) * g * real).sum(dim=(0, 1))
    scores: np.ndarray = (total / len(facts)).numpy().astype(np.float64)
    return scores


def activation_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Example],
    reference: Sequence[Example], chat: bool, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    mean, sd = _usual(model, tokenizer, reference, chat)
    unusual = _fact_means(model, tokenizer, facts, chat, lambda a, layer: (
        (a - torch.as_tensor(mean[layer])).abs() / torch.as_tensor(np.maximum(sd[layer], 1e-8))
    ))  # fmt: skip
    return unusual


def nmd_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Example],
    reference: Sequence[Example], chat: bool, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    mean, _ = _usual(model, tokenizer, reference, chat)
    on_facts = _fact_means(model, tokenizer, facts, chat, lambda a, layer: a.double())
    return np.abs(on_facts - mean)


def _fact_means(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Example],
    chat: bool, transform: Callable[[torch.Tensor, int], torch.Tensor],
) -> np.ndarray:  # fmt: skip
    """The mean over the facts' real positions of `transform(values, layer)`, per neuron."""
    device = next(model.parameters()).device
    batches = _batches(tokenizer, facts, chat, device)
    values, _ = _mlp_values(model, batches)
    sums: torch.Tensor | None = None
    count = 0
    for batch, layers in zip(batches, values, strict=True):
        real = batch["attention_mask"].bool()
        stacked = torch.stack([transform(v[real], i).double() for i, v in enumerate(layers)])
        sums = stacked.sum(1) if sums is None else sums + stacked.sum(1)
        count += int(real.sum())
    assert sums is not None
    result: np.ndarray = (sums / count).numpy()
    return result


def random_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Example],
    reference: Sequence[Example], chat: bool, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    from memgen.core.sites import site_width

    return np.random.default_rng(seed).random((n_layers(model), site_width(model, "mlp")))


SELECTORS.register("attribution")(attribution_scores)
SELECTORS.register("activation")(activation_scores)
SELECTORS.register("nmd")(nmd_scores)
SELECTORS.register("random")(random_scores)
