"""Read the `record` stage's output: activation arrays, labels and pair ids.

    from memgen.core.recorded import read_record
    rec = read_record(Path("runs/color/record"))
    X = rec.activations("resid")        # float32 [N, n_layers, width], memory-mapped
    rec.labels, rec.pair_ids            # [N]: 1 = mem, 0 = gen; a flipped pair shares an id
    rec.answer_margins()                # [N, n_layers] logit-lens readout, or None

The layout (`<kind>.npy` per site and `index.json`) is written by `memgen record`;
this reader is shared by the stages that consume it (neurons, probe), which must
not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memgen.core.artifacts import read_json
from memgen.core.errors import MemgenError

# The scores `memgen record` makes with the model, and the setting that makes each.
CAUSAL_FIX = {
    "patching": "record.patching=[{site}]",
    "hardconcrete": "record.masks=[hardconcrete] (MLP only)",
    "slimming": "record.masks=[slimming] (MLP only)",
}

INDEX = "index.json"
READOUT = "answer_margin.npy"
_FIX = "re-run `memgen record --force`"


@dataclass(frozen=True, eq=False)
class Recorded:
    """One finished record folder."""

    path: Path
    labels: np.ndarray
    pair_ids: np.ndarray
    sites: dict[str, dict[str, int]]
    model: dict[str, Any]
    readout: str | None = None
    gradients: bool = False  # grad_<site>.npy beside each site (memgen.record.gradients)
    # Scores `memgen record` made with the model (exact patching, learned masks):
    # name -> site -> what made it, in <name>_<site>.npy [n_layers, width].
    causal: dict[str, dict[str, dict[str, Any]]] | None = None

    def activations(self, site: str) -> np.ndarray:
        """The [N, n_layers, width] array of `site`, memory-mapped read-only."""
        return self._array(site, site)

    def margin_gradients(self, site: str) -> np.ndarray:
        """d (mem logit - gen logit) / d activation at `site`, [N, n_layers, width]."""
        if not self.gradients:
            raise MemgenError(
                f"{self.path} holds no answer-margin gradients; re-run `memgen record` with "
                "record.gradients=true (the default) on pairs that carry their answers"
            )
        return self._array(site, f"grad_{site}")

    def causal_scores(self, name: str, site: str) -> np.ndarray:
        """The [n_layers, width] map `memgen record` made for `name` at `site`."""
        if site not in (self.causal or {}).get(name, {}):
            raise MemgenError(
                f"{self.path} holds no {name} scores at {site!r}; re-run `memgen record` "
                f"with {CAUSAL_FIX[name].format(site=site)}"
            )
        path = self.path / f"{name}_{site}.npy"
        try:
            scores = np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, EOFError, OSError) as exc:
            raise MemgenError(f"{path} is not readable ({exc}); {_FIX}") from None
        shape = self.sites[site]
        if scores.shape != (int(shape["n_layers"]), int(shape["width"])):
            raise MemgenError(f"{path} has shape {scores.shape}, not [n_layers, width]; {_FIX}")
        return np.asarray(scores)

    def _array(self, site: str, stem: str) -> np.ndarray:
        if site not in self.sites:
            raise MemgenError(
                f"site {site!r} was not recorded (recorded: {', '.join(sorted(self.sites))}); "
                f"add it to record.sites and re-run `memgen record`"
            )
        path = self.path / f"{stem}.npy"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise MemgenError(f"{path} is missing; {_FIX}") from None
        except (ValueError, EOFError, OSError) as exc:
            raise MemgenError(f"{path} is not a readable .npy array ({exc}); {_FIX}") from None
        shape = self.sites[site]
        wanted = (len(self.labels), int(shape["n_layers"]), int(shape["width"]))
        if array.shape != wanted:
            raise MemgenError(f"{path} has shape {array.shape}, index.json says {wanted}; {_FIX}")
        return array

    def answer_margins(self) -> np.ndarray | None:
        """The [N, n_layers] answer readout (`memgen.record.readout`); None if not recorded."""
        if self.readout is None:
            return None
        path = self.path / self.readout
        try:
            margins = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise MemgenError(f"{path} is not readable ({exc}); {_FIX}") from None
        if margins.ndim != 2 or len(margins) != len(self.labels):
            raise MemgenError(f"{path} has shape {margins.shape}, not [N, n_layers]; {_FIX}")
        return margins

    @property
    def n_pairs(self) -> int:
        return len(np.unique(self.pair_ids))


def pair_rows(labels: np.ndarray, pair_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of each pair's mem member and its gen member, pairs in id order."""
    ids = np.unique(pair_ids)
    mem, gen = np.full(len(ids), -1), np.full(len(ids), -1)
    where = np.searchsorted(ids, pair_ids)
    for row, (slot, label) in enumerate(zip(where, labels, strict=True)):
        (mem if label else gen)[slot] = row
    if (mem < 0).any() or (gen < 0).any():
        raise MemgenError(
            "a pair score needs both members of every flipped pair; re-run `memgen record`"
        )
    return mem, gen


def read_record(path: Path) -> Recorded:
    """Read and check `index.json` of a record folder."""
    index = read_json(path / INDEX)
    missing = [k for k in ("labels", "pair_ids", "sites", "model") if k not in index]
    if missing:
        raise MemgenError(f"{path / INDEX} lacks {', '.join(missing)}; {_FIX}")
    labels = np.asarray(index["labels"], dtype=np.int64)
    pair_ids = np.asarray(index["pair_ids"], dtype=np.int64)
    if labels.ndim != 1 or labels.shape != pair_ids.shape:
        raise MemgenError(
            f"{path / INDEX}: {labels.size} labels but {pair_ids.size} pair ids; {_FIX}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise MemgenError(f"{path / INDEX}: labels must be 1 (mem) or 0 (gen); {_FIX}")
    readout = str(index["readout"]) if index.get("readout") else None
    sites, model, gradients = (
        dict(index["sites"]),
        dict(index["model"]),
        bool(index.get("gradients")),
    )
    causal = dict(index.get("causal") or {})
    return Recorded(path, labels, pair_ids, sites, model, readout, gradients, causal)
