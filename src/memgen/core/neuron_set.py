"""Neuron-set files: the selected behaviour neurons, saved as JSON metadata + safetensors arrays.

    from memgen.core.neuron_set import NeuronSet
    ns = NeuronSet.load("runs/color/neurons/top5")     # or top5.json / top5.safetensors
    ns.check_compatible(model)                         # MemgenError if made for another model

`<stem>.json` is human-readable (model identity, site, scorer, top_n, per-layer
counts); `<stem>.safetensors` holds `layers`, `neurons` (int64), `nmd` and `score`
(float32), one entry per selected neuron, strongest |score| first.

Compatibility compares the architecture (model_type, number of layers, hidden size
and the site's width), not `name_or_path`: a saved model that moves folders, or a
LoRA adapter loaded on its base, is still the same network shape.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from memgen.core.artifacts import write_json
from memgen.core.errors import MemgenError
from memgen.core.modeling import model_identity
from memgen.core.sites import SITE_KINDS, SiteKind, site_width

log = logging.getLogger(__name__)

SCORES_FILE = "scores.safetensors"  # `neurons`: the nmd and score maps of every neuron
FORMAT = "memgen.neuron_set"
VERSION = 1
ARRAYS = ("layers", "neurons", "nmd", "score")
_IDENTITY_KEYS = ("model_type", "num_hidden_layers", "hidden_size")
_FIX = "record neurons for this model with `memgen neurons`"


def _describe(identity: dict[str, Any], site: str, width: int) -> str:
    return (
        f"{identity.get('model_type')} ({identity.get('num_hidden_layers')} layers, "
        f"hidden {identity.get('hidden_size')}, {site} width {width})"
    )


def stem_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """(stem, json, safetensors) from any of the three; stems may contain no dot.

    Neuron sets and steering files are each a `<stem>.json` beside a `<stem>.safetensors`.
    """
    stem = Path(path)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    return stem, stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


@dataclass(frozen=True, eq=False)
class NeuronSet:
    """Selected neurons of one site of one model, with their NMD and selection score."""

    model: dict[str, Any]
    site: str
    scorer: str
    top_n: float
    n_layers: int
    width: int
    layers: np.ndarray
    neurons: np.ndarray
    nmd: np.ndarray
    score: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.site not in SITE_KINDS:
            raise MemgenError(
                f"neuron set site {self.site!r} is not one of {', '.join(SITE_KINDS)}"
            )
        lengths = {name: len(getattr(self, name)) for name in ARRAYS}
        if len(set(lengths.values())) != 1:
            raise MemgenError(f"neuron set arrays differ in length {lengths}; {_FIX}")
        if len(self.layers) and (self.layers.min() < 0 or self.layers.max() >= self.n_layers):
            raise MemgenError(f"neuron set has layers outside 0..{self.n_layers - 1}; {_FIX}")
        if len(self.neurons) and (self.neurons.min() < 0 or self.neurons.max() >= self.width):
            raise MemgenError(f"neuron set has neurons outside 0..{self.width - 1}; {_FIX}")

    def __len__(self) -> int:
        return len(self.layers)

    def per_layer(self) -> list[int]:
        counts = np.bincount(np.asarray(self.layers, dtype=np.int64), minlength=self.n_layers)
        return [int(c) for c in counts]

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "site": self.site,
            "scorer": self.scorer,
            "top_n": self.top_n,
            "n_layers": self.n_layers,
            "width": self.width,
            "n_neurons": len(self),
            "per_layer_counts": self.per_layer(),
            "n_mem_leaning": int((self.nmd > 0).sum()),
            "meta": self.meta,
        }

    def save(self, path_stem: str | Path) -> tuple[Path, Path]:
        """Write `<stem>.json` and `<stem>.safetensors`; returns both paths."""
        stem, json_path, arrays_path = stem_paths(path_stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "layers": np.ascontiguousarray(self.layers, dtype=np.int64),
            "neurons": np.ascontiguousarray(self.neurons, dtype=np.int64),
            "nmd": np.ascontiguousarray(self.nmd, dtype=np.float32),
            "score": np.ascontiguousarray(self.score, dtype=np.float32),
        }
        save_file(arrays, str(arrays_path), metadata={"format": FORMAT})
        write_json(json_path, {**self.metadata(), "arrays": arrays_path.name})
        return json_path, arrays_path

    @classmethod
    def load(cls, path: str | Path) -> NeuronSet:
        """Read a neuron set from its stem, `.json` or `.safetensors` path."""
        stem, json_path, arrays_path = stem_paths(path)
        for needed in (json_path, arrays_path):
            if not needed.is_file():
                raise MemgenError(f"no neuron set file {needed}; make it with `memgen neurons`")
        try:
            info = json.loads(json_path.read_text())
            arrays = load_file(str(arrays_path))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as exc:
            raise MemgenError(
                f"neuron set {stem} is corrupt ({exc}); re-make it with `memgen neurons --force`"
            ) from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise MemgenError(f"{json_path} is not a memgen neuron set; re-make it")
        missing = [k for k in ARRAYS if k not in arrays]
        missing += [
            k for k in ("model", "site", "scorer", "top_n", "n_layers", "width") if k not in info
        ]
        if missing:
            raise MemgenError(
                f"neuron set {stem} lacks {', '.join(missing)}; re-make it with "
                "`memgen neurons --force`"
            )
        try:
            return cls(
                model=dict(info["model"]),
                site=str(info["site"]),
                scorer=str(info["scorer"]),
                top_n=float(info["top_n"]),
                n_layers=int(info["n_layers"]),
                width=int(info["width"]),
                layers=arrays["layers"].astype(np.int64),
                neurons=arrays["neurons"].astype(np.int64),
                nmd=arrays["nmd"],
                score=arrays["score"],
                meta=dict(info.get("meta", {})),
            )
        except (TypeError, ValueError) as exc:
            raise MemgenError(
                f"neuron set {stem} has a malformed field ({exc}); re-make it with "
                "`memgen neurons --force`"
            ) from None

    def check_compatible(self, model: torch.nn.Module) -> None:
        """Raise MemgenError unless `model` has the shape this set was recorded on."""
        check_model(self.model, self.site, self.width, model, "neuron set", _FIX)


def check_model(
    saved: dict[str, Any], site: str, width: int, model: torch.nn.Module, what: str, fix: str
) -> None:
    """Raise MemgenError unless `model` has the shape a saved `what` was made for."""
    identity = model_identity(model)
    actual = site_width(model, cast(SiteKind, site))
    same = all(saved.get(k) == identity.get(k) for k in _IDENTITY_KEYS)
    if not same or actual != width:
        raise MemgenError(
            f"{what} was made for {_describe(saved, site, width)} "
            f"but the model is {_describe(identity, site, actual)}; {fix}"
        )
    if saved.get("name_or_path") != identity.get("name_or_path"):
        log.info(
            "%s was made on %r, applying it to %r (same architecture)",
            what,
            saved.get("name_or_path"),
            identity.get("name_or_path"),
        )


def write_scores(folder: Path, maps: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """`neurons`' per-neuron maps ([n_layers, width] float32 each: nmd, nmd_sd, score)."""
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in maps.items()}
    save_file(arrays, str(folder / SCORES_FILE), metadata=metadata)


def read_scores(folder: Path) -> dict[str, np.ndarray]:
    """The maps `write_scores` wrote into a `neurons` folder."""
    path = folder / SCORES_FILE
    try:
        return load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise MemgenError(f"{path}: {exc}; re-run `memgen neurons --force`") from None
