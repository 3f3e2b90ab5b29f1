"""Run folders and manifests: how stages hand their outputs to each other.

Every stage writes into `<run>/<stage>/` and writes `manifest.json` *last*. The
manifest records the stage's resolved config, the seed, package versions, the
manifests of its inputs and a hash of every output file. A folder without a
manifest is unfinished; a stage whose manifest matches its config and inputs is
skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from memgen.core.config import RunConfig
from memgen.core.errors import MemgenError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
_PACKAGES = ("memgen", "torch", "transformers", "peft", "tokenizers", "numpy", "scikit-learn")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def write_json(path: Path, value: Any) -> None:
    """Write atomically, so a crash never leaves half a JSON file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write atomically, as `write_json`."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def share_as_umask_allows(paths: list[Path]) -> None:
    """Give each file at least the mode a plain `open` would have given it.

    safetensors writes its files 0600 whatever the umask, so a run folder's models and
    arrays would be readable by their owner alone, unlike its JSON beside them.
    """
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    wanted = 0o666 & ~umask
    for path in paths:
        mode = path.stat().st_mode & 0o777
        if mode & wanted != wanted:
            path.chmod(mode | wanted)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MemgenError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise MemgenError(f"{path} is not valid JSON ({exc.msg}); delete it and re-run") from None


@dataclass(frozen=True)
class Stage:
    """One stage's output folder inside a run folder."""

    run_dir: Path
    name: str

    @property
    def path(self) -> Path:
        return self.run_dir / self.name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_finished(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        if not self.is_finished():
            raise MemgenError(
                f"stage {self.name!r} has not finished in {self.run_dir}; "
                f"run `memgen {self.name} --run-dir {self.run_dir}` first"
            )
        manifest: dict[str, Any] = read_json(self.manifest_path)
        return manifest

    def identity(self, config: Mapping[str, Any], inputs: list[Stage]) -> dict[str, Any]:
        """What must match for a finished stage to be reused: its config and its inputs'
        identities (their config, inputs and outputs, so recursively everything upstream)."""
        return {
            "config": dict(config),
            "inputs": {stage.name: stage.identity_hash() for stage in inputs},
        }

    def identity_hash(self) -> str:
        manifest = self.manifest()
        return json_hash({key: manifest.get(key) for key in ("config", "inputs", "outputs")})

    def matches(self, config: Mapping[str, Any], inputs: list[Stage]) -> bool:
        if not self.is_finished():
            return False
        manifest = self.manifest()
        wanted = self.identity(config, inputs)
        # Existence, not hashes: rehashing gigabytes of activations on every skip is slow.
        outputs_there = all((self.path / name).is_file() for name in manifest.get("outputs", {}))
        return bool(
            manifest.get("config") == wanted["config"]
            and manifest.get("inputs") == wanted["inputs"]
            and outputs_there
        )

    def is_current(self) -> bool:
        """Finished, and every stage it read still has the outputs it read then."""
        if not self.is_finished():
            return False
        read = self.manifest().get("inputs", {})
        sources = [Stage(self.run_dir, name) for name in read]
        if not all(source.is_finished() for source in sources):
            return False
        return bool(self.identity({}, sources)["inputs"] == read)

    def up_to_date(self, config: Mapping[str, Any], inputs: list[Stage], force: bool) -> bool:
        """Whether a finished run with this config and inputs can be reused (logged).

        Otherwise every input must have finished: a missing one fails here, naming the
        command that makes it, before any work is done.
        """
        if not force and self.matches(config, inputs):
            log.info("%s: up to date, skipped", self.name)
            return True
        for stage in inputs:
            stage.manifest()
        return False

    def begin(self) -> Path:
        """Open the folder for writing: drop an old manifest so a crash leaves it unfinished."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        return self.path

    def finish(
        self,
        config: Mapping[str, Any],
        inputs: list[Stage],
        seed: int,
        summary: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Hash every output file and write the manifest, last."""
        files = sorted(path for path in self.path.rglob("*") if path.is_file())
        share_as_umask_allows(files)
        outputs = {
            str(path.relative_to(self.path)): file_hash(path)
            for path in files
            if path.name != MANIFEST and "checkpoints" not in path.relative_to(self.path).parts
        }
        manifest = {
            "stage": self.name,
            **self.identity(config, inputs),
            "seed": seed,
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "summary": dict(summary or {}),
            "outputs": outputs,
        }
        write_json(self.manifest_path, manifest)
        return manifest


@dataclass(frozen=True)
class Step:
    """A stage about to run, as `memgen.pipeline` hands it to the stage's function: its
    folder, its inputs by name, its identity and the config it declared."""

    run_dir: Path
    stage: Stage
    inputs: Mapping[str, Stage]
    config: dict[str, Any]
    cfg: RunConfig  # only what the stage declared (memgen.pipeline.declared)
    force: bool = False  # redo even what a checkpoint could resume

    def finish(self, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.stage.finish(self.config, list(self.inputs.values()), self.cfg.seed, summary)
