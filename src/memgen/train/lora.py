"""Wrap a pretrained causal LM with a PEFT LoRA adapter (reference: r=8, alpha=32, dropout 0.1)."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel

from memgen.core.config import LoraConfig
from memgen.core.errors import MemgenError, first_line
from memgen.core.modeling import quiet_peft


def add_lora(model: PreTrainedModel, cfg: LoraConfig) -> PreTrainedModel:
    """Freeze the base and add trainable low-rank adapters (PEFT's default targets if None)."""
    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        with quiet_peft():
            return get_peft_model(model, peft_config)  # type: ignore[return-value]
    except ValueError as exc:
        # Unknown architecture without targets, or targets that match no module.
        raise MemgenError(
            f"LoRA cannot wrap this {model.config.model_type} model ({first_line(exc)}); set "
            "train.lora.target_modules to its linear layers, e.g. [q_proj,v_proj]"
        ) from None


def save_model(model: PreTrainedModel, folder: Path) -> None:
    """`save_pretrained` in safetensors; an adapter keeps its embeddings only where LoRA
    targets them. PEFT's default ("auto") otherwise asks the hub whether the base's
    vocabulary changed: a network call and a warning at every kept checkpoint, offline
    included. memgen never resizes a pretrained base's vocabulary."""
    if isinstance(model, PeftModel):
        targets = model.peft_config[model.active_adapter].target_modules or ()
        embeddings = isinstance(targets, str) or bool({"embed_tokens", "lm_head"} & set(targets))
        model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=embeddings)
    else:
        model.save_pretrained(folder, safe_serialization=True)
