"""Batched generation: what it hides from the user, and what it must not."""

import logging

import torch

from memgen.core.generation import _quiet_dropped_mask


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_false_missing_mask_warning_is_dropped_only_for_unpadded_batches() -> None:
    # transformers' loggers do not propagate to the root, so listen on the source itself.
    source = logging.getLogger("transformers.modeling_utils")
    seen = _Collect()
    source.addHandler(seen)
    alarm = "We strongly recommend passing in an `attention_mask` since your input_ids may be pad"
    try:
        with _quiet_dropped_mask(torch.ones(2, 5, dtype=torch.long)):
            source.warning(alarm)
            source.warning("another warning")
        with _quiet_dropped_mask(torch.tensor([[0, 1, 1], [1, 1, 1]])):
            source.warning(alarm)
        source.warning(alarm)
    finally:
        source.removeHandler(seen)
    assert seen.messages == ["another warning", alarm, alarm]
