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
    logits = steered_logits(model, shifter, prefix, shifts, tails)    # [B, K, 1 + T, V]

`tails` feeds tokens after the prompt's last one (the answers' shared start, up to where
they part: `memgen.core.forks`), each copy's tokens attending causally to their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from memgen.core.hooks import Position
from memgen.core.modeling import cache_argument
from memgen.core.prefix import Prefix

if TYPE_CHECKING:
    from memgen.steering.shifts import RowShifts


def steered_last_logits(
    model: PreTrainedModel, shifter: RowShifts, prefix: Prefix, shifts: torch.Tensor
) -> torch.Tensor:
    """[N, K, vocab]: the last-position logits of each prompt under each of `shifts` [K, L, W]."""
    return steered_logits(model, shifter, prefix, shifts)[:, :, 0]


def steered_logits(
    model: PreTrainedModel,
    shifter: RowShifts,
    prefix: Prefix,
    shifts: torch.Tensor,
    tails: torch.Tensor | None = None,
    position: Position = "last",
) -> torch.Tensor:
    """[N, K, 1 + T, vocab]: the logits at each prompt's last token and at each of its
    `tails` tokens [N, T] fed after it (teacher-forced; padding after a shorter tail is
    read by nothing before it), under each of `shifts` [K, L, W], every fed position
    shifted, as a shift at the last position of every pass shifts every token
    generation feeds ("last"; "prompt": the prompt's last token only, as a shift of the
    prompt's pass does)."""
    batch, copies = len(prefix.ids), len(shifts)
    fed = prefix.ids[:, -1:] if tails is None else torch.cat([prefix.ids[:, -1:], tails], 1)
    span = fed.shape[1]
    # The copies sit side by side as the row's last `copies x span` positions; each copy's
    # tokens attend to the prompt and causally to their own copy, never to another copy.
    device = prefix.ids.device
    own = torch.block_diag(*[torch.ones(span, span, dtype=torch.bool, device=device)] * copies)
    own &= torch.ones_like(own).tril()
    seen = torch.cat(
        [
            prefix.mask[:, None, :-1].bool().expand(-1, copies * span, -1),
            own.expand(batch, -1, -1),
        ],
        dim=-1,
    )
    dtype = next(model.parameters()).dtype
    blocked = torch.zeros(seen.shape, dtype=dtype, device=seen.device)
    blocked = blocked.masked_fill(~seen, torch.finfo(dtype).min)[:, None]  # [N, 1, K*S, keys]
    rows = shifts[None, :, None].expand(batch, -1, span, -1, -1)
    if position == "prompt" and span > 1:
        first = torch.zeros(span, dtype=shifts.dtype, device=shifts.device)
        first[0] = 1.0
        rows = rows * first[:, None, None]
    shifter.rows = rows.reshape(batch, copies * span, *shifts.shape[1:])
    positions = prefix.positions[:, -1:] + torch.arange(span, device=device)
    try:
        logits = model(
            input_ids=fed.repeat(1, copies),
            attention_mask=blocked,
            position_ids=positions.repeat(1, copies),
            use_cache=True,
            **{cache_argument(model): prefix.cache(model)},
        ).logits
    finally:
        shifter.rows = None
    return logits.float().view(batch, copies, span, -1)
