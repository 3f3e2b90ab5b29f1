"""What each recorded neuron does to the answer: the gradient of the answer margin.

    grads = margin_gradients(model, tokenizer, prompts, forks, ["resid", "mlp"],
                             chat=False, batch_size=64)   # {kind: float32 [N, n_layers, width]}

For each prompt, the margin is the logit of the memorized answer's token minus the rule
answer's where the two answers part (`memgen.core.forks`: at the prompt's last token, or
after the tokens both answers start with, fed as generation writes them); its gradient
with respect to each site's activation at the last prompt token (where `record` reads
the activations) is what attribution patching multiplies by an activation difference
(`memgen.neurons.attribution`). The gradient is total, not direct: with the weights
frozen, the token embeddings are made the graph's leaf, so a neuron's effect through
every later layer and position counts. Rows whose answers never part get zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from memgen.core.forks import Fork, fed_to_fork, fork_tokens
from memgen.core.generation import left_padded_positions, pad_id_of, pad_left
from memgen.core.hooks import edit
from memgen.core.modeling import embeddings_as_leaf, frozen, unwrap
from memgen.core.sites import Site, SiteKind, all_sites


def _keeper(kept: dict[Site, torch.Tensor], site: Site) -> Callable[[torch.Tensor], None]:
    def keep(activation: torch.Tensor) -> None:
        activation.retain_grad()
        kept[site] = activation

    return keep


def margin_gradients(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    forks: Sequence[Fork],
    kinds: Sequence[SiteKind],
    *,
    chat: bool,
    batch_size: int,
    out: Mapping[str, np.ndarray],
) -> None:
    """Write d margin / d activation at the last prompt token into `out[kind]` [N, L, W]
    (`forks`: each prompt's memorized answer's fork from its rule answer)."""
    sites = all_sites(model, kinds)
    inner = unwrap(model)
    device = next(model.parameters()).device
    mem_ids, gen_ids = fork_tokens(forks)
    valid = torch.from_numpy(mem_ids >= 0)
    fed = fed_to_fork(tokenizer, prompts, forks, chat)
    order = sorted(range(len(fed)), key=lambda i: len(fed[i]))
    with frozen(model), embeddings_as_leaf(inner):
        for start in range(0, len(order), batch_size):  # similar lengths: less padding
            rows = order[start : start + batch_size]
            ids, mask = pad_left([fed[i] for i in rows], pad_id_of(tokenizer), device)
            kept: dict[Site, torch.Tensor] = {}
            with edit(model, {site: _keeper(kept, site) for site in sites}):
                hidden = inner.base_model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=left_padded_positions(mask),
                    use_cache=False,
                ).last_hidden_state[:, -1]
            # Only the two answer tokens' logits: never [batch, vocabulary] for the sequence.
            logits = inner.get_output_embeddings()(hidden).float()
            index = torch.from_numpy(np.stack([mem_ids[rows], gen_ids[rows]], 1)).clamp(min=0)
            pair = logits.gather(-1, index.to(device))
            margin = (pair[:, 0] - pair[:, 1]) * valid[rows].to(device)
            margin.sum().backward()
            # The last prompt token: before each row's shared answer tokens.
            at = torch.tensor([-1 - len(forks[i].shared) for i in rows], device=device)
            batch = torch.arange(len(rows), device=device)
            for kind in kinds:
                grads = [kept[s].grad[batch, at] for s in sites if s.kind == kind]  # type: ignore[index]
                out[kind][rows] = torch.stack(grads, 1).float().cpu().numpy()
