"""The KV cache of many prompts but their last token, run once and read many times.

    prefix = Prefix.of(model, ids, mask)        # left-padded prompts, no hook may act yet
    prefix.select(rows).cache(model)            # a fresh cache of those rows, to run on

Everything that varies only at or after a prompt's last token (a steering shift there, the
answer tokens a teacher-forced check feeds) sees the same keys and values for the rest of
the prompt, since attention is causal: running that part once serves every variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from memgen.core.generation import left_padded_positions
from memgen.core.modeling import returned_cache, unwrap


@dataclass(frozen=True)
class Prefix:
    """Left-padded prompts and the KV cache of all but their last token."""

    ids: torch.Tensor  # [N, width]
    mask: torch.Tensor  # [N, width]
    positions: torch.Tensor  # [N, width]
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [N, heads, width - 1, d]

    @classmethod
    @torch.no_grad()
    def of(
        cls, model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 128
    ) -> Prefix:
        """Run the prompts but their last token; no shift may be set while this runs."""
        positions = left_padded_positions(mask)
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for start in range(0, len(ids), batch_size):
            rows = slice(start, start + batch_size)
            out = model(
                input_ids=ids[rows, :-1],
                attention_mask=mask[rows, :-1],
                position_ids=positions[rows, :-1],
                use_cache=True,
            )
            cache = returned_cache(out)
            parts.append([(layer.keys, layer.values) for layer in cache.layers])
        keys_values = [
            (torch.cat([part[i][0] for part in parts]), torch.cat([part[i][1] for part in parts]))
            for i in range(len(parts[0]))
        ]
        return cls(ids, mask, positions, keys_values)

    def select(self, rows: Sequence[int] | np.ndarray) -> Prefix:
        index = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.ids.device)
        return Prefix(
            self.ids[index],
            self.mask[index],
            self.positions[index],
            [(keys[index], values[index]) for keys, values in self.keys_values],
        )

    def cache(self, model: PreTrainedModel) -> DynamicCache:
        """A fresh cache holding the prefix (the forward pass appends to it)."""
        return DynamicCache(self.keys_values, config=unwrap(model).config)
