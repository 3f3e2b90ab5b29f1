"""Localization selectors: a score per MLP neuron for how much some answers depend on it.

    usual = usual_values(model, tokenizer, reference, chat)   # once per model
    scores = SELECTORS.get("attribution")(model, tokenizer, facts, usual, chat, seed)  # [L, W]

Each looks at the answers to localize (`facts`: prompt + answer, teacher-forced) beside
each neuron's usual value (its mean and sd over ordinary prompts, `usual_values`), and
ranks the neurons; the top k are the selection. The ablation test (`memgen.localize.test`)
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
- `hardconcrete` and `slimming`: a learned deletion mask (Chang, Thomason & Jia 2024's
  best localizers): a gate per neuron that moves it toward its usual value, trained with
  the model frozen so the facts' rule answers come back while the ordinary prompts keep
  theirs, under a sparsity penalty; the score is the gate's final log-odds (L0,
  hard-concrete) or value (L1). The retention term is what attribution lacks: it asks
  for the neurons the facts need and the rest do not.
- `random`: random scores, the floor every selector must beat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.answers import answer_batches, answer_loss, decoder_and_head
from memgen.core.config import MaskMethod
from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.core.hooks import edit
from memgen.core.modeling import embeddings_as_leaf, frozen
from memgen.core.progress import progress
from memgen.core.registry import Registry
from memgen.core.sites import Site, n_layers, site_width
from memgen.record.masks import Gates, toward_mean


@dataclass(frozen=True)
class Usual:
    """Each MLP neuron's mean and sd [L, W] over every real position of ordinary prompts,
    and those prompts (what a selector may ask to keep)."""

    mean: np.ndarray
    sd: np.ndarray
    examples: tuple[Example, ...]


Selector = Callable[
    [PreTrainedModel, PreTrainedTokenizerBase, Sequence[Example], Usual, bool, int], np.ndarray
]
SELECTORS: Registry[Selector] = Registry("localization selector")
# Per batch and layer, a function of the neurons' values [positions, W] and the layer.
Transform = Callable[[torch.Tensor, int], torch.Tensor]


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
            embeddings_as_leaf(model) if grad else contextlib.nullcontext(),
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


def _position_means(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    chat: bool,
    transforms: Sequence[Transform],
) -> list[np.ndarray]:
    """Per transform, its mean over the examples' real positions, per neuron [L, W]: the
    examples run once for all of them."""
    batches = answer_batches(model, tokenizer, examples, chat)
    values, _ = _mlp_values(model, batches)
    sums = [
        torch.zeros(n_layers(model), site_width(model, "mlp"), dtype=torch.float64)
        for _ in transforms
    ]
    count = 0
    for batch, layers in zip(batches, values, strict=True):
        real = batch["attention_mask"].bool()
        for total, transform in zip(sums, transforms, strict=True):
            total += torch.stack(
                [transform(v[real].double().cpu(), i) for i, v in enumerate(layers)]
            ).sum(1)
        count += int(real.sum())
    return [(total / count).numpy() for total in sums]


def usual_values(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reference: Sequence[Example],
    chat: bool,
) -> Usual:
    """Each neuron's mean and sd over every real position of the `reference` prompts."""
    mean, square = _position_means(
        model, tokenizer, reference, chat, [lambda a, _: a, lambda a, _: a * a]
    )
    return Usual(mean, np.sqrt(np.maximum(square - mean * mean, 0.0)), tuple(reference))


@SELECTORS.register("attribution")
def attribution_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Example],
    usual: Usual,
    chat: bool,
    seed: int = 0,
) -> np.ndarray:
    # The recalled answer's log-likelihood, though near p = 1 its gradient is small: the
    # margin against the rule's answer (the flipped pairs' attribution) found no more of
    # SmolLM2's planted neurons (seed 0, recall at 0.1% / 1%: 0.27 / 0.12 vs 0.31 / 0.14).
    batches = answer_batches(model, tokenizer, facts, chat)
    with frozen(model):
        values, grads = _mlp_values(model, batches, grad=True)
    device = next(model.parameters()).device
    mean = torch.as_tensor(usual.mean, dtype=torch.float32, device=device)
    total = torch.zeros_like(mean)
    for batch, layer_values, layer_grads in zip(batches, values, grads, strict=True):
        real = batch["attention_mask"].unsqueeze(-1)
        for layer, (a, g) in enumerate(zip(layer_values, layer_grads, strict=True)):
            # Log-likelihood lost by setting the neuron to its usual value everywhere.
            total[layer] += ((a - mean[layer]) * g * real).sum(dim=(0, 1))
    scores: np.ndarray = (total / len(facts)).cpu().numpy().astype(np.float64)
    return scores


@SELECTORS.register("activation")
def activation_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Example],
    usual: Usual,
    chat: bool,
    seed: int = 0,
) -> np.ndarray:
    mean, sd = torch.as_tensor(usual.mean), torch.as_tensor(np.maximum(usual.sd, 1e-8))
    distance: Transform = lambda a, layer: (a - mean[layer]).abs() / sd[layer]  # noqa: E731
    (unusual,) = _position_means(model, tokenizer, facts, chat, [distance])
    return unusual


@SELECTORS.register("nmd")
def nmd_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Example],
    usual: Usual,
    chat: bool,
    seed: int = 0,
) -> np.ndarray:
    (on_facts,) = _position_means(model, tokenizer, facts, chat, [lambda a, _: a])
    return np.abs(on_facts - usual.mean)


# `memgen record`'s mask settings (lr and penalty chosen there on the tiny planted control)
# with 100 steps, fixed before this selector ran on any model; unchanged since.
MASK_STEPS, MASK_LR, MASK_PENALTY, MASK_BATCH = 100, 0.05, 10.0, 32


def learned_deletion(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Example],
    usual: Usual,
    chat: bool,
    seed: int,
    method: MaskMethod,
) -> np.ndarray:
    """Gate scores [L, W]: high = deleting the neuron turns the facts back to the rule
    and leaves the ordinary prompts' answers. Each step sees every fact and one batch of
    ordinary prompts."""
    if not facts or any(not fact.gen_answer for fact in facts):
        raise MemgenError(
            f"localize: {method} turns facts back to their rule answer, and some facts have "
            "none; make them with `memgen.localize.plant.make_facts`"
        )
    if not usual.examples:
        raise MemgenError(f"localize: {method} needs ordinary prompts; raise localize.n_reference")
    as_rule = [replace(fact, completion=fact.gen_answer) for fact in facts]
    (forget,) = answer_batches(model, tokenizer, as_rule, chat, batch_size=len(as_rule))
    keep = answer_batches(model, tokenizer, usual.examples, chat, batch_size=MASK_BATCH)
    depth, device = n_layers(model), next(model.parameters()).device
    gates = Gates((depth, site_width(model, "mlp")), method).to(device)
    mean = torch.as_tensor(usual.mean, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(gates.parameters(), lr=MASK_LR)
    generator = torch.Generator().manual_seed(seed)
    split = decoder_and_head(model)
    with frozen(model):
        for step in progress(range(MASK_STEPS), f"localize: {method} mask"):
            z = gates.sample(generator)
            edits = {Site("mlp", i): toward_mean(z[i], mean[i]) for i in range(depth)}
            with edit(model, edits):
                loss = answer_loss(model, split, forget)
                loss = loss + answer_loss(model, split, keep[step % len(keep)])
            loss = loss + MASK_PENALTY * gates.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return gates.scores()


def _learned(method: MaskMethod) -> Selector:
    """`learned_deletion` with its mask method fixed: a selector of the registry's shape."""

    def selector(
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        facts: Sequence[Example],
        usual: Usual,
        chat: bool,
        seed: int = 0,
    ) -> np.ndarray:
        return learned_deletion(model, tokenizer, facts, usual, chat, seed, method)

    return selector


SELECTORS.register("hardconcrete")(_learned("hardconcrete"))
SELECTORS.register("slimming")(_learned("slimming"))


@SELECTORS.register("random")
def random_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Example],
    usual: Usual,
    chat: bool,
    seed: int = 0,
) -> np.ndarray:
    return np.random.default_rng(seed).random(usual.mean.shape)
