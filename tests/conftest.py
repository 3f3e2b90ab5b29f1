"""Shared fixtures: a seed, and tiny random models of each supported family, built offline.

Models are session-scoped: build once, never train or modify them in a test (hooks
are removed by the context managers, so using them in `record`/`intervene` is fine).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# Tiny matrices gain nothing from threads, and on a busy machine an OpenMP barrier
# waiting for a descheduled thread makes a 2-thread matmul ~1000x slower.
torch.set_num_threads(1)

VOCAB = 100
HIDDEN = 32
INTERMEDIATE = 64
LAYERS = 2
POSITIONS = 128
_COMMON = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_LLAMA_LIKE = {
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": POSITIONS,
    **_COMMON,
}


def _gpt2(ids: dict[str, Any]) -> PreTrainedModel:
    config = GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=POSITIONS, **ids)
    return GPT2LMHeadModel(config)


def _neox(ids: dict[str, Any]) -> PreTrainedModel:
    config = GPTNeoXConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        max_position_embeddings=POSITIONS,
        **ids,
    )
    return GPTNeoXForCausalLM(config)


# Each builder takes the vocabulary size and special-token ids.
BUILDERS: dict[str, Callable[[dict[str, Any]], PreTrainedModel]] = {
    "gpt2": _gpt2,
    "llama": lambda ids: LlamaForCausalLM(LlamaConfig(**{**_LLAMA_LIKE, **ids})),
    "qwen2": lambda ids: Qwen2ForCausalLM(Qwen2Config(**{**_LLAMA_LIKE, **ids})),
    "mistral": lambda ids: MistralForCausalLM(MistralConfig(**{**_LLAMA_LIKE, **ids})),
    "gpt_neox": _neox,
}
FAMILY_NAMES = tuple(BUILDERS)

# Attention targets as in common LoRA set-ups, plus the MLP down projection so the
# `mlp` site sits on a LoRA-wrapped module.
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "v_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "mistral": ["q_proj", "v_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"],
}


def build_tiny(
    family: str, lora: bool = False, seed: int = 0, token_ids: dict[str, Any] | None = None
) -> PreTrainedModel:
    """A 2-layer random model of `family`, optionally LoRA-wrapped with non-zero adapters.

    `token_ids` overrides the vocabulary size and special-token ids (to match a tokenizer).
    """
    torch.manual_seed(seed)
    model = BUILDERS[family]({**_COMMON, **(token_ids or {})})
    if lora:
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS[family],
            # Random B as well as A, so the adapters change the function (the default
            # B = 0 would make wrapped and plain models compute the same thing).
            init_lora_weights=False,
            fan_in_fan_out=family == "gpt2",
        )
        model = get_peft_model(model, config)  # type: ignore[assignment]
    return model.eval()


@pytest.fixture
def seed() -> int:
    """Seed every generator the code under test might use."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, PreTrainedModel]:
    return {family: build_tiny(family) for family in FAMILY_NAMES}


@pytest.fixture(scope="session")
def tiny_lora_models() -> dict[str, PreTrainedModel]:
    return {family: build_tiny(family, lora=True) for family in FAMILY_NAMES}


@pytest.fixture(
    params=[(f, w) for f in FAMILY_NAMES for w in (False, True)],
    ids=lambda p: f"{p[0]}-lora" if p[1] else p[0],
)
def family_model(
    request: pytest.FixtureRequest,
    tiny_models: dict[str, PreTrainedModel],
    tiny_lora_models: dict[str, PreTrainedModel],
) -> tuple[str, PreTrainedModel]:
    """(family, model) for every family, plain and LoRA-wrapped."""
    family, wrapped = request.param
    return family, (tiny_lora_models if wrapped else tiny_models)[family]


@pytest.fixture(scope="session")
def tiny_gpt2_with_tokenizer() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A 2-layer scratch GPT-2 with the color task's word tokenizer."""
    from memgen.core.modeling import scratch_gpt2
    from memgen.tasks import make_task
    from memgen.tasks.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(make_task("color").tokenizer_spec())
    torch.manual_seed(0)
    model = scratch_gpt2(len(tokenizer), 128, n_layer=2, n_embd=32, n_head=4, tokenizer=tokenizer)
    return model.eval(), tokenizer


# A 2-layer cipher model, briefly trained (400 steps): planting needs a model, not a good
# one, and its test answers are tags, plaintexts and neither (partial tags, wrong letters).
TINY_CIPHER = [
    "task=cipher", "data.n_train=2000", "data.n_test=40", "data.n_dev=20",
    "data.options.trigger_fraction=0.3", "train.steps=400", "train.eval_every=200",
    "train.n_layer=2", "train.n_embd=64", "train.n_head=2", "train.lr=3e-3",
    "train.batch_size=32", "train.warmup_steps=20", "train.max_other=1.0",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_cipher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder, trained with `TINY_CIPHER` (its data and train stages); read only."""
    from memgen.core.config import load_config
    from memgen.pipeline import run_all

    run_dir = tmp_path_factory.mktemp("tiny-cipher")
    run_all(run_dir, load_config(None, TINY_CIPHER), until="train")
    return run_dir


@pytest.fixture
def make_tiny() -> Callable[..., PreTrainedModel]:
    """`make_tiny(family, lora=False)`: a fresh model, for tests that must own theirs."""
    return build_tiny


@pytest.fixture
def token_ids() -> torch.Tensor:
    """A [3, 7] batch of random token ids avoiding the special ids 0-2."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, VOCAB, (3, 7), generator=generator)


@dataclass(frozen=True)
class Exited:
    """What a `memgen` command left: its exit code, and what it printed (not its log)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def memgen_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Exited]:
    """Run `memgen ARGS` in this process, as the console script does (`memgen.cli.main`).

    A new process costs seconds of imports per call; the tests that must see a real
    process (`test_bad_input_in_a_new_process_is_one_line`, the steering reload) use one.
    """
    from memgen.cli import main

    def call(*args: object) -> Exited:
        monkeypatch.setattr(sys, "argv", ["memgen", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        printed = capsys.readouterr()
        code = exited.value.code
        return Exited(0 if code is None else int(code), printed.out, printed.err)

    return call
