"""Learned deletion masks over the MLP neurons: which neurons, mean-ablated, turn memory
into the rule? (after Chang, Thomason & Jia, NAACL 2024, HARD CONCRETE and SLIMMING)

    forks = answer_forks(tokenizer, rule_answers, memorized_answers)
    scores = learned_mask(model, tokenizer, prompts, forks, "hardconcrete", steps=200,
                          lr=0.05, penalty=1.0, batch_size=32, chat=False, seed=0)  # [L, W]

Every MLP neuron gets a gate z in [0, 1] that moves its activation toward its mean over the
pair prompts at every position, a + z (mean - a). The gates are trained, the model frozen,
on the flipped pairs' prompts (both members) to make the rule answer's token the next
one where it parts from the memorized answer (cross-entropy; `memgen.core.forks`: after
the prompt, or after the tokens both answers start with): on a memorized member that
means forgetting, on a rule member keeping it. A sparsity penalty (`penalty` x the mean gate)
keeps the mask small, so the neurons it ablates are those memory needs and the rule does
not. `hardconcrete`: stochastic hard-concrete gates with the expected L0 norm as the
penalty (Louizos et al. 2018); `slimming`: continuous gates clamped to [0, 1] with an
L1 penalty. The score is the gate's final log-odds (hardconcrete) or value (slimming):
top-N by score is the mask at that sparsity.

A slimming gate clamped below 0 gets no gradient from either term and stays closed: past
the mask's few open gates the ranking is where each gate stopped in the first steps. A
straight-through clamp (every gate keeps its gradient) was tried on 2026-12-06 and not
kept: it raised the planted control's recall on the GPT-2 cipher contest (0.80 / 0.70 /
0.85 to 1.00 / 0.95 / 0.95, seeds 0-2) but lost the flipped-pair deletion (seeds 0 and
1, top 20: memory kept 0.14 / 0.32 to 0.92 / 0.83, no longer beyond random sets), as
docs/log/localization.md records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from memgen.core.config import MaskMethod
from memgen.core.forks import Fork, fed_to_fork
from memgen.core.generation import encode_prompt, left_padded_positions, pad_id_of, pad_left
from memgen.core.hooks import Edit, edit, record
from memgen.core.modeling import frozen, unwrap
from memgen.core.sites import Site, n_layers, site_width

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # hard-concrete temperature and stretch (Louizos et al.)


def _batches(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    rows: np.ndarray,
    chat: bool,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [encode_prompt(tokenizer, prompts[i], chat) for i in rows]
    return pad_left(ids, pad_id_of(tokenizer), device)


@torch.no_grad()
def position_means(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    chat: bool,
    batch_size: int,
) -> torch.Tensor:
    """[L, W]: each MLP neuron's mean over every real position of `prompts`."""
    sites = [Site("mlp", layer) for layer in range(n_layers(model))]
    device = next(model.parameters()).device
    total = torch.zeros(len(sites), site_width(model, "mlp"), dtype=torch.float64)
    count = 0
    for start in range(0, len(prompts), batch_size):
        ids, mask = _batches(
            tokenizer,
            prompts,
            np.arange(start, min(start + batch_size, len(prompts))),
            chat,
            device,
        )
        with record(model, sites, "all") as seen:
            model(input_ids=ids, attention_mask=mask, position_ids=left_padded_positions(mask))
        real = mask.unsqueeze(-1).to(torch.float64)
        for layer, site in enumerate(sites):
            total[layer] += (seen[site].to(torch.float64) * real).sum(dim=(0, 1)).cpu()
        count += int(mask.sum())
    return (total / max(1, count)).float()


class Gates(torch.nn.Module):
    """One gate per MLP neuron, [L, W]; `sample` draws them, `penalty` is the sparsity term."""

    def __init__(self, shape: tuple[int, int], method: MaskMethod) -> None:
        super().__init__()
        self.method = method
        start = -2.0 if method == "hardconcrete" else 0.05  # mostly closed: few ablated
        self.param = torch.nn.Parameter(torch.full(shape, start))

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        if self.method == "slimming":
            return self.param.clamp(0.0, 1.0)
        # Drawn on the CPU (the generator's device), so a seed gives the same gates anywhere.
        u = torch.rand(self.param.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
        u = u.to(self.param.device)
        s = torch.sigmoid((u.log() - (1 - u).log() + self.param) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def penalty(self) -> torch.Tensor:
        if self.method == "slimming":
            return self.param.clamp(0.0, 1.0).mean()
        return torch.sigmoid(self.param - BETA * math.log(-GAMMA / ZETA)).mean()  # P(z > 0)

    def scores(self) -> np.ndarray:
        return self.param.detach().cpu().double().numpy()


def toward_mean(gate: torch.Tensor, mean: torch.Tensor) -> Edit:
    def apply(activation: torch.Tensor) -> torch.Tensor:
        return activation + gate.to(activation.dtype) * (mean.to(activation.dtype) - activation)

    return apply


def learned_mask(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    forks: Sequence[Fork],
    method: MaskMethod,
    *,
    steps: int,
    lr: float,
    penalty: float,
    batch_size: int,
    chat: bool,
    seed: int,
) -> np.ndarray:
    """float64 [L, W] gate scores: high = ablating the neuron moves answers to the rule
    (`forks`: each prompt's rule answer's, from its memorized answer where it has one)."""
    depth, width = n_layers(model), site_width(model, "mlp")
    device = next(model.parameters()).device
    mean = position_means(model, tokenizer, prompts, chat, batch_size).to(device)
    gates = Gates((depth, width), method).to(device)
    optimizer = torch.optim.Adam(gates.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    inner = unwrap(model)
    fed = fed_to_fork(tokenizer, prompts, forks, chat)
    rule_ids = np.array([fork.token for fork in forks])
    usable = np.flatnonzero(rule_ids >= 0)  # an answer that ends at its fork, no end token
    with frozen(model):
        for _ in tqdm(range(steps), desc=f"mask {method}", disable=None, leave=False):
            count = (min(batch_size, len(usable)),)
            rows = usable[torch.randint(len(usable), count, generator=generator).numpy()]
            ids, mask = pad_left([fed[i] for i in rows], pad_id_of(tokenizer), device)
            z = gates.sample(generator)  # on the gates' device
            edits = {
                Site("mlp", layer): toward_mean(z[layer], mean[layer]) for layer in range(depth)
            }
            with edit(model, edits):
                hidden = inner.base_model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=left_padded_positions(mask),
                    use_cache=False,
                ).last_hidden_state[:, -1]
            logits = inner.get_output_embeddings()(hidden).float()
            target = torch.as_tensor(rule_ids[rows], device=device)
            loss = torch.nn.functional.cross_entropy(logits, target) + penalty * gates.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return gates.scores()
