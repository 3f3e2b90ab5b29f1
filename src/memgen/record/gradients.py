"""What each recorded neuron does to the answer: the gradient of the answer margin.

    grads = margin_gradients(model, tokenizer, prompts, mem_ids, gen_ids, ["resid", "mlp"],
                             chat=False, batch_size=64)   # {kind: float32 [N, n_layers, width]}

For each prompt, the margin is the logit of the memorized answer's first token minus the
rule answer's, at the last prompt token (the readout's last layer, `memgen.record.readout`);
its gradient with respect to each site's activation at that token is what attribution
patching multiplies by an activation difference (`memgen.neurons.attribution`). The
gradient is total, not direct: with the weights frozen, the token embeddings are made the
graph's leaf, so a neuron's effect through every later layer counts. Rows whose two
answers start with the same token (or are empty) have no margin and get zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from memgen.core.generation import left_padded_positions, padded_batches
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
    mem_ids: np.ndarray,
    gen_ids: np.ndarray,
    kinds: Sequence[SiteKind],
    *,
    chat: bool,
    batch_size: int,
    out: Mapping[str, np.ndarray],
) -> None:
    """Write d margin / d activation at the last prompt token into `out[kind]` [N, L, W]."""
    sites = all_sites(model, kinds)
    inner = unwrap(model)
    device = next(model.parameters()).device
    valid = torch.from_numpy((mem_ids != gen_ids) & (mem_ids >= 0) & (gen_ids >= 0))
    batches = padded_batches(
        tokenizer, prompts, chat=chat, batch_size=batch_size, device=device, desc="gradients"
    )
    with frozen(model), embeddings_as_leaf(inner):
        for rows, ids, mask in batches:
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
            for kind in kinds:
                grads = [kept[s].grad[:, -1] for s in sites if s.kind == kind]  # type: ignore[index]
                out[kind][rows] = torch.stack(grads, 1).float().cpu().numpy()
