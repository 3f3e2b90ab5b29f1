"""Many shifts of the last position, on prompts whose shared part runs once.

A shift added at a prompt's last position changes nothing before it (attention is
causal), so every shift sees the same keys and values for the prompt but its last
token. `Prefix` runs that part once, unshifted and without autograd, and keeps its KV
cache; `steered_last_logits` then runs only the last token, once per shift, the copies
side by side as the row's last positions, each attending to the prompt and to itself.
Fitting K shifts for many steps on a fixed set of prompts so costs, per step, one
token's forward and backward per shift and prompt: no prompt is re-run, and no cache is
copied K times (benchmarks/steer_batching.py measures both against running them).

    prefix = Prefix.of(model, ids, mask)                 # once, before any shift is set
    logits = steered_last_logits(model, shifter, prefix.select(rows), shifts)  # [B, K, V]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from memgen.core.modeling import cache_argument
from memgen.core.prefix import Prefix

if TYPE_CHECKING:
    from memgen.steering.shifts import RowShifts


def steered_last_logits(
    model: PreTrainedModel, shifter: RowShifts, prefix: Prefix, shifts: torch.Tensor
) -> torch.Tensor:
    """[N, K, vocab]: the last-position logits of each prompt under each of `shifts` [K, L, W]."""
    batch, copies = len(prefix.ids), len(shifts)
    # The copies sit side by side as the row's last `copies` positions, all at the last
    # token's position id; each attends to the prompt and to itself, never to another copy.
    seen = torch.cat(
        [
            prefix.mask[:, None, :-1].bool().expand(-1, copies, -1),
            torch.eye(copies, dtype=torch.bool, device=prefix.ids.device).expand(batch, -1, -1),
        ],
        dim=-1,
    )
    dtype = next(model.parameters()).dtype
    blocked = torch.zeros(seen.shape, dtype=dtype, device=seen.device)
    blocked = blocked.masked_fill(~seen, torch.finfo(dtype).min)[:, None]  # [N, 1, K, keys]
    shifter.rows = shifts[None].expand(batch, -1, -1, -1)
    try:
        logits = model(
            input_ids=prefix.ids[:, -1:].expand(-1, copies),
            attention_mask=blocked,
            position_ids=prefix.positions[:, -1:].expand(-1, copies),
            use_cache=True,
            **{cache_argument(model): prefix.cache(model)},
        ).logits
    finally:
        shifter.rows = None
    return logits.float()
