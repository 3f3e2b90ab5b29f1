"""A memory planted in known MLP neurons: the ground truth a localization test needs.

After Chang, Thomason & Jia (NAACL 2024, "Do Localization Methods Actually Localize
Memorized Data in LLMs?", their INJ benchmark): take a trained model, pick a random
few MLP neurons per layer, and teach the model new facts by training only those
neurons' parameters (the rows that compute each neuron and the column that writes it
back), everything else frozen. The facts can then live nowhere but in those neurons, so
a selector that localizes memories must find them, and ablating them must forget them.

Here a fact is one of the task's prompts answered with a memorized answer of the task
(a tag, a colour, a number) that its rule does not give: a new memory in the task's own
vocabulary, which every tokenizer of the task can spell.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from memgen.core.answers import answer_batch, answer_loss, decoder_and_head, greedy_writes
from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.core.generation import encode_example
from memgen.core.progress import progress
from memgen.core.sites import Site, n_layers, resolve, site_width

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Neurons:
    """MLP neurons as parallel (layer, index) arrays."""

    layers: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.layers)

    def flat(self, width: int) -> np.ndarray:
        return np.asarray(self.layers * width + self.indices)

    def per_layer(self, depth: int) -> np.ndarray:
        return np.bincount(self.layers, minlength=depth)


def random_neurons(
    per_layer: Sequence[int] | np.ndarray, width: int, rng: np.random.Generator
) -> Neurons:
    """`per_layer[l]` distinct random neurons of each layer l."""
    layers = np.repeat(np.arange(len(per_layer)), per_layer)
    chosen = [rng.choice(width, size=int(count), replace=False) for count in per_layer]
    indices = np.concatenate(chosen).astype(int) if chosen else np.zeros(0, dtype=int)
    return Neurons(layers, indices)


def spread_matched(
    top: Neurons, spread: np.ndarray, rng: np.random.Generator, window: int
) -> Neurons:
    """For each neuron of `top`, a random neuron of its layer whose `spread` [L, W] is
    close: drawn from the `window` neurons nearest it in that layer's ranking by spread,
    distinct within a layer. A control for "deleting big neurons deletes more"."""
    chosen = np.empty_like(top.indices)
    for layer in np.unique(top.layers):
        order = np.argsort(spread[layer], kind="stable")
        rank = np.argsort(order)
        size = min(window, len(order))
        taken: set[int] = set()
        for row in np.flatnonzero(top.layers == layer):
            start = int(np.clip(rank[top.indices[row]] - size // 2, 0, len(order) - size))
            pool = [n for n in order[start : start + size].tolist() if n not in taken]
            if not pool:  # more picks than the window holds: widen to the whole layer
                pool = [n for n in order.tolist() if n not in taken]
            chosen[row] = pick = int(rng.choice(pool))
            taken.add(pick)
    return Neurons(top.layers.copy(), chosen)


def make_facts(examples: Sequence[Example], n_facts: int, seed: int) -> list[Example]:
    """`n_facts` rule prompts, each answered with a memorized answer its rule does not give.

    The planted answer stands in `completion` and `mem_answer`; `gen_answer` keeps what
    the rule says, so "planted" and "rule" read like the task's own mem and gen.
    """
    rule = [ex for ex in examples if ex.gen_answer]
    answers = sorted({ex.mem_answer for ex in examples if ex.mem_answer})
    if len(rule) < n_facts or not answers:
        raise MemgenError(
            f"localize: the training set has {len(rule)} rule prompts and {len(answers)} "
            f"memorized answers; planting {n_facts} facts needs more (raise data.n_train)"
        )
    rng = random.Random(seed)
    facts = []
    for ex in rng.sample(rule, n_facts):
        planted = rng.choice([a for a in answers if a != ex.gen_answer])
        facts.append(
            replace(ex, completion=planted, mem_answer=planted, meta={**ex.meta, "planted": True})
        )
    return facts


def neuron_masks(model: PreTrainedModel, neurons: Neurons) -> dict[str, torch.Tensor]:
    """For each MLP parameter that computes or writes a chosen neuron: a 0/1 gradient mask
    that lets only the chosen neurons' rows (and the down projection's columns) change.

    The MLP's own modules are found by shape: every projection that outputs the MLP's
    width computes its neurons (GPT-2 `c_fc`; LLaMA `gate_proj`, `up_proj`), and the
    site's module (the down projection) reads them.
    """
    masks: dict[str, torch.Tensor] = {}
    width = site_width(model, "mlp")
    names = {id(p): name for name, p in model.named_parameters()}
    for layer in range(n_layers(model)):
        chosen = torch.as_tensor(neurons.indices[neurons.layers == layer], dtype=torch.long)
        if not len(chosen):
            continue
        down = resolve(model, Site("mlp", layer))
        parent = _parent(model, down)
        for module in parent.modules():
            for name, param in module.named_parameters(recurse=False):
                mask = _rows(module, name, param, width, chosen, module is down)
                if mask is not None:
                    masks[names[id(param)]] = mask
    if not masks:
        raise MemgenError("localize: found no MLP projection of the model's MLP width")
    return masks


def _parent(model: torch.nn.Module, child: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if any(c is child for c in module.children()):
            return module
    raise MemgenError("localize: the MLP's down projection has no parent module")


def _rows(
    module: torch.nn.Module,
    name: str,
    param: torch.Tensor,
    width: int,
    chosen: torch.Tensor,
    is_down: bool,
) -> torch.Tensor | None:
    """The mask of `param` that selects the chosen neurons, or None if it holds none."""
    mask = torch.zeros_like(param)
    # nn.Linear keeps weight [out, in]; GPT-2's Conv1D keeps it [in, out].
    out_axis, in_axis = (1, 0) if isinstance(module, Conv1D) else (0, 1)
    if name == "bias":
        if is_down or param.shape[0] != width:
            return None
        mask[chosen] = 1
    elif is_down:
        mask.index_fill_(in_axis, chosen, 1)
    elif param.dim() == 2 and param.shape[out_axis] == width:
        mask.index_fill_(out_axis, chosen, 1)
    else:
        return None
    return mask


@dataclass(frozen=True)
class Planting:
    steps: int
    recall: float  # share of the facts answered exactly, teacher-forced


# A planting's progress, as `plant` hands it to `save` every 10 steps and takes it back as
# `resume`: the step, the recall there, and per trained parameter its chosen entries and
# their Adam moments (every other entry of both moments is exactly 0: its gradient is).
Progress = dict[str, np.ndarray]


def plant(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Example],
    replay: Sequence[Example],
    neurons: Neurons,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    chat: bool,
    seed: int,
    resume: Progress | None = None,
    save: Callable[[Progress], None] | None = None,
) -> Planting:
    """Train the facts (beside replayed training rows, so the rest is kept) into
    `neurons` only, until all of them are recalled or `steps` run out. In place.

    Adam without weight decay: a parameter entry whose gradient is always zero never
    moves, so every weight outside the chosen rows stays bit-for-bit as it was. With
    `save`, the progress is handed over every 10 steps; `resume` (one of those) goes on
    from there to the same weights as an unstopped planting (an hour or more on SmolLM2).
    """
    masks, params = neuron_masks(model, neurons), dict(model.named_parameters())
    handles = _train_only(model, params, masks)
    optimizer = torch.optim.Adam([params[name] for name in masks], lr=lr)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded_facts = [encode_example(tokenizer, ex, chat, "answer") for ex in facts]
    encoded_replay = [encode_example(tokenizer, ex, chat, "answer") for ex in replay]
    rng, drawn = random.Random(seed), min(batch_size, len(replay))
    split = decoder_and_head(model)  # the output head only at the answers: 49k wide on SmolLM2
    start, recall = (0, 0.0) if resume is None else _restore(resume, params, masks, optimizer)
    for _ in range(start):
        rng.sample(range(len(replay)), drawn)  # the draws the stopped planting made
    step = start
    # Resumed where all were recalled (stopped before its result was kept): nothing to do.
    todo = range(start + 1, steps + 1) if recall < 1.0 else range(0)
    try:
        for step in progress(todo, "localize: planting (stops early when all are recalled)"):
            rows = encoded_facts + rng.sample(encoded_replay, drawn)
            model.train()
            loss = answer_loss(model, split, answer_batch(rows, range(len(rows)), pad, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 10 == 0 or step == steps:
                recall = _recalled(model, tokenizer, facts, chat, step)
                if save is not None:
                    save(_progress(step, recall, params, masks, optimizer))
                if recall == 1.0:
                    break
    finally:
        for handle in handles:
            handle.remove()
        for param in model.parameters():
            param.requires_grad_(False)
        model.eval()
    return Planting(step, recall)


def _recalled(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Example],
    chat: bool,
    step: int,
) -> float:
    """The share of the facts recalled, logged: a planting can take an hour."""
    hits = greedy_writes(model, tokenizer, facts, chat)
    log.info("localize: planting step %d: %d of %d facts recalled", step, hits.sum(), len(hits))
    return float(np.mean(hits))


def _train_only(
    model: PreTrainedModel, params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Freeze everything but the masked parameters, whose gradients the masks then cut to
    the chosen entries; the hooks are returned for removal."""
    for param in model.parameters():
        param.requires_grad_(False)
    handles = []
    for name, mask in masks.items():
        params[name].requires_grad_(True)
        handles.append(params[name].register_hook(lambda grad, m=mask: grad * m))
    return handles


def _progress(
    step: int,
    recall: float,
    params: dict[str, torch.nn.Parameter],
    masks: dict[str, torch.Tensor],
    optimizer: torch.optim.Adam,
) -> Progress:
    out = {"step": np.array([step]), "recall": np.array([recall])}
    for name, mask in masks.items():
        chosen, param = mask.bool(), params[name]
        state = optimizer.state[param]
        # float32 holds every float16 / bfloat16 value exactly; numpy has no bfloat16.
        out[name] = param.detach()[chosen].float().cpu().numpy()
        for moment in ("exp_avg", "exp_avg_sq"):
            out[f"{name}.{moment}"] = state[moment][chosen].float().cpu().numpy()
    return out


def _restore(
    saved: Progress,
    params: dict[str, torch.nn.Parameter],
    masks: dict[str, torch.Tensor],
    optimizer: torch.optim.Adam,
) -> tuple[int, float]:
    """Put a planting's progress back into the weights and the optimizer: (step, recall)."""
    step = int(saved["step"][0])
    with torch.no_grad():
        for name, mask in masks.items():
            chosen, param = mask.bool(), params[name]

            def entries(key: str, param: torch.Tensor = param) -> torch.Tensor:
                return torch.from_numpy(saved[key]).to(param.device, param.dtype)

            param[chosen] = entries(name)
            state: dict[str, torch.Tensor] = {"step": torch.tensor(float(step))}
            for moment in ("exp_avg", "exp_avg_sq"):
                state[moment] = torch.zeros_like(param)
                state[moment][chosen] = entries(f"{name}.{moment}")
            optimizer.state[param] = state
    return step, float(saved["recall"][0])
