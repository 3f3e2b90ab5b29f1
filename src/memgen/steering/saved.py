"""Steering files: a chosen steering, saved so that it applies to a freshly loaded model.

    steering = memgen.load_steering("runs/cipher/steer/best/mem_to_gen")
    with memgen.steer(model, steering):        # refuses a model of another shape
        model.generate(...)

`<stem>.safetensors` holds `shift`, the [n_layers, width] array added to the site (zeros
leave a neuron alone); `<stem>.json` holds the model identity, the site, the position
("last": every forward pass; "prompt": the prompt's last token only), what made it
(method, selection, size) and the rates it reached on held-out prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from memgen.core.artifacts import write_json
from memgen.core.errors import MemgenError
from memgen.core.hooks import POSITIONS, Intervention, Position
from memgen.core.neuron_set import check_model, stem_paths
from memgen.core.sites import SITE_KINDS, Site, SiteKind

FORMAT = "memgen.steering"
VERSION = 1
_FIX = "make it for this model with `memgen steer`"


@dataclass(frozen=True, eq=False)
class Steering:
    """A shift [n_layers, width] for one site of one model, and how it was chosen."""

    model: dict[str, Any]
    site: str
    position: Position
    shift: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.site not in SITE_KINDS:
            raise MemgenError(f"steering site {self.site!r} is not one of {', '.join(SITE_KINDS)}")
        if self.position not in ("last", "prompt"):
            raise MemgenError(f"steering position {self.position!r} is not 'last' or 'prompt'")
        if self.shift.ndim != 2 or not np.isfinite(self.shift).all():
            raise MemgenError(f"a steering shift must be a finite [layers, width] array; {_FIX}")

    def interventions(self) -> list[Intervention]:
        """One `add` per steered layer, on the neurons the shift moves."""
        out = []
        for layer, row in enumerate(self.shift):
            moved = np.flatnonzero(row)
            if moved.size:
                out.append(
                    Intervention(
                        site=Site(cast(SiteKind, self.site), layer),
                        neurons=tuple(int(n) for n in moved),
                        op="add",
                        values=tuple(float(v) for v in row[moved]),
                        position=self.position,  # type: ignore[arg-type]
                    )
                )
        return out

    def check_compatible(self, model: torch.nn.Module) -> None:
        check_model(self.model, self.site, self.shift.shape[1], model, "steering", _FIX)

    def save(self, path_stem: str | Path) -> tuple[Path, Path]:
        stem, json_path, arrays_path = stem_paths(path_stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        shift = np.ascontiguousarray(self.shift, dtype=np.float32)
        save_file({"shift": shift}, str(arrays_path), metadata={"format": FORMAT})
        info = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "site": self.site,
            "position": self.position,
            "n_layers": shift.shape[0],
            "width": shift.shape[1],
            "n_moved": int(np.count_nonzero(shift)),
            "meta": self.meta,
            "arrays": arrays_path.name,
        }
        write_json(json_path, info)
        return json_path, arrays_path


def load_steering(path: str | Path) -> Steering:
    """Read a steering file from its stem, `.json` or `.safetensors` path."""
    stem, json_path, arrays_path = stem_paths(path)
    for needed in (json_path, arrays_path):
        if not needed.is_file():
            raise MemgenError(f"no steering file {needed}; {_FIX}")
    try:
        info = json.loads(json_path.read_text())
        shift = load_file(str(arrays_path))["shift"]
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, KeyError) as exc:
        raise MemgenError(f"steering file {stem} is corrupt ({exc}); {_FIX}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise MemgenError(f"{json_path} is not a memgen steering file; {_FIX}")
    missing = [k for k in ("model", "site", "position") if k not in info]
    if missing:
        raise MemgenError(f"steering file {stem} lacks {', '.join(missing)}; {_FIX}")
    position = info["position"]
    if position not in POSITIONS:
        choices = ", ".join(POSITIONS)
        raise MemgenError(
            f"steering file {stem}: position {position!r} is not one of {choices}; {_FIX}"
        )
    return Steering(
        model=dict(info["model"]),
        site=str(info["site"]),
        position=position,
        shift=shift.astype(np.float64),
        meta=dict(info.get("meta", {})),
    )
