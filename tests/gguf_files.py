"""Write a tiny random LLaMA and a byte-level BPE tokenizer to a GGUF file, as llama.cpp does.

The tests load such files back through memgen's GGUF path (no 93 MB wheel needed). F32
tensors round-trip exactly, so the reloaded model's logits equal the original's.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ROPE_THETA = 10000.0
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i s", "r e"]


def byte_level_vocabulary() -> tuple[list[str], list[str]]:
    """Specials first (ids 0-2: eos/bos/pad), the 256 byte symbols, then each merge's result."""
    symbols = sorted(bytes_to_unicode().values(), key=ord)
    merged = [merge.replace(" ", "") for merge in MERGES]
    return [*SPECIALS, *symbols, *merged], MERGES


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=0, pad_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for q and k (transformers undoes it on load)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    config, state = model.config, model.state_dict()
    names = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    out = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    for layer in range(config.num_hidden_layers):
        for hf, short in names.items():
            weight = state[f"model.layers.{layer}.{hf}.weight"].numpy()
            if short == "attn_q":
                weight = _permute(weight, config.num_attention_heads)
            elif short == "attn_k":
                weight = _permute(weight, config.num_key_value_heads)
            out[f"blk.{layer}.{short}.weight"] = weight
    return {name: np.ascontiguousarray(np.asarray(t, dtype=np.float32)) for name, t in out.items()}


def write_tiny_gguf(path: Path, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random LLaMA written to `path` as F32 GGUF; returns the model it holds."""
    tokens, merges = byte_level_vocabulary()
    model = tiny_llama(len(tokens), seed)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("memgen tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_token_types([control if t in SPECIALS else normal for t in tokens])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_pad_token_id(2)
    for name, tensor in _tensors(model).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
