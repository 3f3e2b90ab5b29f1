"""Finished pieces of an unfinished stage, kept so a killed stage resumes where it stopped.

    pieces = Pieces(out / "pieces", step)
    rows = pieces.get("pearson-0.01", DeletionRow, lambda: measure(...))
    scores = pieces.arrays("scores-attribution", lambda: {"scores": score(...)})["scores"]
    ...
    pieces.clear()  # before the stage's manifest, so its outputs are only its results

A stage whose pieces each take minutes (a deletion row on a 135M model takes ~20 min on
one core) saves each as it finishes, stamped with the stage's identity (its config and
inputs): a rerun of the same stage reads them back instead of measuring again; a piece
made under another config, or any piece under `--force`, is measured again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from memgen.core.artifacts import Step, json_hash, read_json, write_json
from memgen.core.rows import R, dump_rows, read_rows


class Pieces:
    def __init__(self, folder: Path, step: Step) -> None:
        self.folder = folder
        self.identity = json_hash(step.stage.identity(step.config, list(step.inputs.values())))
        if step.force:
            self.clear()

    def get(self, name: str, kind: type[R], measure: Callable[[], Sequence[R]]) -> list[R]:
        """The rows saved under `name` by this stage's identity, or `measure()`'s, saved."""
        path = self.folder / f"{name}.json"
        if path.is_file():
            saved = read_json(path)
            if isinstance(saved, dict) and saved.get("identity") == self.identity:
                return read_rows(kind, saved["rows"], str(path))
        rows = list(measure())
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(path, {"identity": self.identity, "rows": dump_rows(rows)})
        return rows

    def arrays(
        self, name: str, measure: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """The arrays saved under `name` by this stage's identity, or `measure()`'s, saved
        (safetensors: a selector's scores, the weights a planting changed)."""
        saved = self.saved_arrays(name)
        if saved is None:
            saved = {key: np.ascontiguousarray(value) for key, value in measure().items()}
            self.save_arrays(name, saved)
        return saved

    def saved_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays saved under `name` by this stage's identity, or None."""
        path = self.folder / f"{name}.safetensors"
        try:
            with safe_open(str(path), framework="numpy") as saved:
                if (saved.metadata() or {}).get("identity") == self.identity:
                    return {key: saved.get_tensor(key) for key in saved.keys()}  # noqa: SIM118
        except (SafetensorError, OSError):
            pass  # none yet, or cut short by a crash: measured again
        return None

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Save (or replace, atomically) the arrays under `name`: a long piece's progress."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(arrays, str(tmp), metadata={"identity": self.identity})
        os.replace(tmp, path)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
