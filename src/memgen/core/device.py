"""Device and dtype resolution: CUDA and bf16 when there, CPU and float32 otherwise."""

from __future__ import annotations

import torch

from memgen.core import distributed
from memgen.core.errors import MemgenError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return _launched(torch.device("cuda"))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MemgenError(
            f"device {name!r} is not a torch device (use auto, cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MemgenError(f"device {name!r} asked for, but CUDA is not available; use device=cpu")
    return _launched(device)


def _launched(device: torch.device) -> torch.device:
    """Under a launcher, process k of a node takes GPU k (`cuda` names no index)."""
    if device.type == "cuda" and device.index is None and distributed.world_size() > 1:
        return torch.device("cuda", distributed.local_rank())
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _DTYPES[name]
