"""Wrap a pretrained causal LM with a PEFT LoRA adapter (reference: r=8, alpha=32, dropout 0.1)."""

from __future__ import annotations

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import PreTrainedModel

from memgen.core.config import LoraConfig
from memgen.core.errors import MemgenError


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
        return get_peft_model(model, peft_config)  # type: ignore[return-value]
    except ValueError as exc:
        # Unknown architecture without targets, or targets that match no module.
        first_line = str(exc).strip().splitlines()[0]
        raise MemgenError(
            f"LoRA cannot wrap this {model.config.model_type} model ({first_line}); set "
            "train.lora.target_modules to its linear layers, e.g. [q_proj,v_proj]"
        ) from None
