"""Resumable training state: trainable weights and AdamW moments as safetensors, the rest JSON.

No pickle anywhere, so a checkpoint from elsewhere cannot run code when loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from memgen.core.errors import MemgenError


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().contiguous().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def save(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> None:
    """Write to a temporary folder, then swap it in: a kill never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    opt = optimizer.state_dict()
    moments = {
        f"{index}.{key}": value.contiguous()
        for index, slots in opt["state"].items()
        for key, value in slots.items()
        if isinstance(value, torch.Tensor)
    }
    save_file(moments, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**meta, "param_groups": opt["param_groups"]}))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and optimizer in place; return the saved meta (step, history...)."""
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        moments = load_file(str(path / "optimizer.safetensors"))
        meta: dict[str, Any] = json.loads((path / "state.json").read_text())
    except (OSError, SafetensorError, json.JSONDecodeError) as exc:
        raise MemgenError(
            f"checkpoint {path} is unreadable ({exc}); delete that folder to restart training"
        ) from None
    missing = set(trainable_state(model)) - set(weights)
    if missing:
        raise MemgenError(
            f"checkpoint {path} is for another model ({len(missing)} weights missing, e.g. "
            f"{sorted(missing)[0]}); delete it or use another --run-dir"
        )
    model.load_state_dict(weights, strict=False)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in moments.items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def made_by(path: Path, identity: str) -> bool:
    """Whether the checkpoint at `path` (if any) was saved by a run of this identity.

    A checkpoint from another config (another learning rate, selection rule or data) must
    not be resumed: its weights and its history belong to another run.
    """
    state = path / "state.json"
    if not state.is_file():
        return True
    try:
        saved = json.loads(state.read_text()).get("identity")
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return bool(saved == identity)
