"""Load and save models: GPT-2 from a config, any HF causal LM by name or path, LoRA adapters.

Weights are read with safetensors only; `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from memgen.core import distributed
from memgen.core.config import TrainConfig
from memgen.core.device import resolve_device, resolve_dtype
from memgen.core.errors import MemgenError, first_line
from memgen.core.gguf import check_gguf, dequantized, gguf_name, is_gguf_source

log = logging.getLogger(__name__)
ADAPTER_CONFIG = "adapter_config.json"


def scratch_gpt2(
    vocab_size: int, n_positions: int, n_layer: int, n_embd: int, n_head: int, tokenizer: Any
) -> GPT2LMHeadModel:
    if n_embd % n_head:
        raise MemgenError(f"train.n_embd={n_embd} must be a multiple of train.n_head={n_head}")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        # GPT-2's tanh-approximate GELU ("gelu_new"), computed by PyTorch's one fused kernel
        # instead of seven elementwise ops: the same function, and training steps 1.3-1.4x
        # faster on CPU (benchmarks/stages.py, "activation").
        activation_function="gelu_pytorch_tanh",
        # Small data, few steps: dropout only slows learning here.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def resolve_model_source(name_or_path: str) -> str:
    """A local folder as an absolute path (adapters record it), a GGUF as its dequantized
    cache folder (memgen.core.gguf), or a hub name unchanged."""
    if is_gguf_source(name_or_path):
        return str(dequantized(name_or_path))
    folder = local_model_folder(name_or_path)
    return name_or_path if folder is None else str(folder)


def check_model_source(name_or_path: str) -> None:
    """Refuse, before any work and writing nothing, a `train.model` that cannot load: a
    GGUF that is missing or not a GGUF, or a path that is no model folder."""
    if is_gguf_source(name_or_path):
        check_gguf(name_or_path)
    elif name_or_path != "scratch":
        local_model_folder(name_or_path)  # refuses a path that is no model folder


def is_hub_name(name_or_path: str) -> bool:
    """Whether `train.model` names a model on the Hugging Face hub (not GGUF, path, scratch)."""
    return (
        name_or_path != "scratch"
        and not is_gguf_source(name_or_path)
        and local_model_folder(name_or_path) is None
    )


def check_hub_model(name: str) -> None:
    """Refuse a hub name that is malformed, or neither cached nor on a reachable hub, in one
    request: without it the hub client's retries took 4 minutes, after the data stage."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
        HfApi().model_info(name, timeout=10)
    # The hub client raises its HTTP library's errors (requests or httpx, by version) as
    # well as its own: any of them means the model cannot be fetched now.
    except Exception as error:
        raise MemgenError(
            f"cannot fetch model {name!r} from the Hugging Face hub ({first_line(error)}) and "
            "it is not in the local cache; give a local folder with config.json and "
            "*.safetensors, a .gguf file, or a hub name you can download"
        ) from None


def local_model_folder(name_or_path: str) -> Path | None:
    """The model folder `name_or_path` names, resolved, or None where it is a hub name.

    Something that can only be a path (`./x`, `/x`, `a/b/c`, `runs/x` where `runs/`
    exists) and is not a folder fails here, at once, instead of after the hub's retries.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MemgenError(
                f"{path} holds no config.json; give a folder written by save_pretrained "
                "(or made by `memgen pretrain --out DIR`)"
            )
        return path.resolve()
    looks_local = (
        name_or_path.startswith((".", "/", "~"))
        or name_or_path.count("/") > 1
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    )
    if looks_local:
        raise MemgenError(
            f"no model folder at {name_or_path}; give a folder with config.json and "
            "*.safetensors, or a hub name such as meta-llama/Llama-3.2-1B-Instruct"
        )
    return None


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT wrapping a model without its FutureWarning about a transformers attribute that
    PEFT itself reads (`is_gradient_checkpointing`): a line in every log a user cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        yield


def load_pretrained(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device_map: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hugging Face causal LM and its tokenizer, from the hub cache or a local folder.

    `device_map` ("auto", "balanced", ...) spreads a model too large for one device over
    the visible GPUs (and CPU), layer by layer, as `from_pretrained` does.
    """
    if device_map is not None and distributed.world_size() > 1:
        raise MemgenError(
            f"train.device_map={device_map} spreads one model over one process's GPUs; "
            "run without a launcher, or drop device_map to copy the model to each process"
        )
    source, name_or_path = name_or_path, resolve_model_source(name_or_path)
    placement = {} if device_map is None else {"device_map": device_map}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **placement,
        )
    except (OSError, ValueError, SafetensorError) as exc:
        raise MemgenError(
            f"cannot load model {name_or_path!r} ({first_line(exc)}); give a local folder with "
            "config.json and *.safetensors, or a hub name that is already in the cache"
        ) from None
    if is_gguf_source(source):
        # Adapters and neuron sets name the GGUF, not this machine's cache folder, so
        # they load wherever the GGUF does (the cache is remade from it).
        model.name_or_path = model.config._name_or_path = gguf_name(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def load_trained(
    path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: torch.device | None = None,
    device_map: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model saved by `memgen train` (a full model folder, or a LoRA adapter folder),
    in eval mode, on `device` when given (or spread by `device_map`)."""
    model, tokenizer = _load_trained(
        path, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map
    )
    if device is not None and device_map is None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer


def load_run_model(
    train_dir: Path, cfg: TrainConfig, device_name: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model a `train` stage kept, on the run's device, in the training dtype."""
    device = resolve_device(device_name)
    return load_trained(
        train_dir / "model",
        dtype=resolve_dtype(cfg.dtype, device),
        trust_remote_code=cfg.trust_remote_code,
        device=device,
        device_map=cfg.device_map,
    )


def _load_trained(
    path: Path, *, dtype: torch.dtype, trust_remote_code: bool, device_map: str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not path.is_dir():
        raise MemgenError(f"no trained model at {path}; run `memgen train` first")
    adapter_config = path / ADAPTER_CONFIG
    load = functools.partial(
        load_pretrained, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map
    )
    if not adapter_config.is_file():
        return load(str(path))
    from peft import PeftModel

    try:
        adapter = json.loads(adapter_config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MemgenError(f"{adapter_config} is not valid JSON; re-run `memgen train`") from None
    base_name = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
    if not base_name:
        raise MemgenError(f"{adapter_config} names no base model; re-save the adapter")
    base, _ = load(base_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with quiet_peft():
            model = PeftModel.from_pretrained(base, path)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise MemgenError(
            f"cannot load the adapter in {path} ({exc}); re-run `memgen train`"
        ) from None
    tokenizer.padding_side = "left"
    return model, tokenizer  # type: ignore[return-value]


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's weights without gradients, in eval mode, for the length of the block
    (fitting a shift, attributing to activations); trainable weights train again after."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


@contextlib.contextmanager
def embeddings_as_leaf(model: PreTrainedModel) -> Iterator[None]:
    """With the weights frozen, nothing needs a gradient: make the token embeddings a leaf
    that does, so every later activation is in one graph (total effects, not direct)."""
    handle = model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: output.detach().requires_grad_(True)
    )
    try:
        yield
    finally:
        handle.remove()


def unwrap(model: torch.nn.Module) -> PreTrainedModel:
    """The plain transformers model under any PEFT wrapping."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    return base  # type: ignore[no-any-return,return-value]


def model_identity(model: torch.nn.Module) -> dict[str, Any]:
    """What a neuron set must match to be applied to a model."""
    config = unwrap(model).config
    return {
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "name_or_path": str(getattr(config, "_name_or_path", "")),
    }


def cache_argument(model: torch.nn.Module) -> str:
    """transformers 5 names the KV cache argument `cache`; earlier releases `past_key_values`."""
    parameters = inspect.signature(unwrap(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass returns, under either release's name."""
    return output["cache" if "cache" in output else "past_key_values"]
