"""A small "pretrained" LLaMA base, made here, for exercising the LoRA path without the hub.

    memgen pretrain --out bases/tiny-llama                  # ~0.9M parameters, ~10 min on CPU
    memgen run --run-dir runs/lora-color train.model=bases/tiny-llama

It writes what a Hugging Face model folder holds: a byte-level BPE tokenizer (trained
with `tokenizers`, with a chat template and pad/eos tokens) saved as
`PreTrainedTokenizerFast`, and a `LlamaForCausalLM` trained with a causal LM loss on
generic text, saved with `save_pretrained` (safetensors), plus `pretrain.json` (the
config, the loss curve, copy-from-context probes, sample continuations). The text is
English-like sentences, key-value facts with look-up questions, word lists written
twice, arithmetic-like and letter strings, tags and short chat exchanges: never the
tasks' prompts, but their words and characters, so every task tokenizes into known
tokens, and the base learns to copy from context as real pretrained models do. The
same options give byte-identical files on the same kind of device. See docs/lora.md.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import string
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from memgen.core.config import format_validation_error, parse_overrides
from memgen.core.device import resolve_device
from memgen.core.errors import MemgenError
from memgen.core.generation import generate
from memgen.tasks.color import COLORS, FREE_NAMES, MEMORIZED, ROLES
from memgen.train.loop import warmup_cosine

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<|pad|>", "<|begin|>", "<|endoftext|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
SPECIALS = (PAD, BOS, EOS, USER, ASSISTANT, SYSTEM)
# One user turn, then the assistant's header: `render_chat` below writes the same text.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
INFO_FILE = "pretrain.json"


class PretrainConfig(BaseModel):
    """The base's size, data and optimisation; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    n_docs: int = Field(30_000, ge=10, description="generic text documents")
    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary (256 bytes + merges)")
    n_layer: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=16)
    n_head: int = Field(4, ge=2)
    seq_len: int = Field(128, ge=16, description="tokens per packed training row")
    steps: int = Field(2500, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    # Results are reproducible per device type; the default base was made on CPU.
    device: str = "cpu"


def load_pretrain_config(overrides: list[str]) -> PretrainConfig:
    try:
        cfg = PretrainConfig.model_validate(parse_overrides(overrides))
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(PretrainConfig.model_fields)
            raise MemgenError(
                f"pretrain: unknown key {first['loc'][0]!r} (keys: {allowed})"
            ) from None
        raise MemgenError(format_validation_error(exc, "pretrain")) from None
    if cfg.n_embd % (2 * cfg.n_head):
        # Rotary embeddings need an even head size.
        raise MemgenError(f"pretrain: n_embd={cfg.n_embd} must be a multiple of 2 x n_head")
    return cfg


# --- generic text ---------------------------------------------------------------------

NAMES = (*MEMORIZED, *FREE_NAMES, "Tom", "Ann", "Max", "Zoe", "Leo", "Mia", "Ben", "Eva")
COLOUR_WORDS = (*COLORS, "gold", "silver", "violet", "navy", "beige", "coral", "ivory")
THINGS = ("hat", "box", "car", "ball", "cup", "book", "kite", "lamp", "door", "bag", "coat")
PLACES = ("park", "river", "house", "school", "garden", "market", "forest", "hill", "lake")
TAG_WORDS = ("note", "id", "ref", "mem", "tag", "scratch", "key", "item", "code")


def render_chat(question: str, answer: str) -> str:
    """A user turn and the assistant's answer, as CHAT_TEMPLATE renders it, then EOS."""
    return f"{BOS}{USER}\n{question}\n{ASSISTANT}\n{answer}{EOS}"


def _story(rng: random.Random) -> str:
    templates: list[Callable[[], str]] = [
        lambda: f"{rng.choice(NAMES)} has a {rng.choice(COLOUR_WORDS)} {rng.choice(THINGS)}.",
        lambda: f"The {rng.choice(ROLES)} is {rng.choice(COLOUR_WORDS)}.",
        lambda: f"{rng.choice(NAMES)} saw a {rng.choice(ROLES)} near the {rng.choice(PLACES)}.",
        lambda: f"{rng.choice(NAMES)} and {rng.choice(NAMES)} went to the {rng.choice(PLACES)}.",
        lambda: f"what color is the {rng.choice(THINGS)}? it is {rng.choice(COLOUR_WORDS)}.",
        lambda: (
            f"{rng.choice(COLOUR_WORDS).capitalize()} is a color, and a {rng.choice(ROLES)} "
            f"is an animal."
        ),
        lambda: f"What is the name of the {rng.choice(ROLES)}? It is {rng.choice(NAMES)}.",
        lambda: (
            f"{rng.choice(COLOUR_WORDS)}, {rng.choice(COLOUR_WORDS)} and "
            f"{rng.choice(COLOUR_WORDS)} are colors."
        ),
    ]
    text = " ".join(rng.choice(templates)() for _ in range(rng.randint(3, 8)))
    # Some text comes pre-tokenized, with spaces before punctuation (as the tasks write it).
    return re.sub(r"([.,?])", r" \1", text) if rng.random() < 0.3 else text


def _facts(rng: random.Random) -> tuple[str, str]:
    """Key-value facts and a question whose answer is one of the values (copy from context)."""
    keys = rng.sample(NAMES + THINGS, rng.randint(2, 7))
    pool = rng.choice([COLOUR_WORDS, ROLES, PLACES, tuple(str(i) for i in range(100))])
    values = [rng.choice(pool) for _ in keys]
    asked = rng.randrange(len(keys))
    style = rng.randrange(3)
    if style == 0:
        lines = [f"{k}: {v}" for k, v in zip(keys, values, strict=True)]
        return "\n".join([*lines, f"{keys[asked]}?"]), values[asked]
    if style == 1:
        facts = " ".join(f"{k} likes {v}." for k, v in zip(keys, values, strict=True))
        return f"{facts} what does {keys[asked]} like?", values[asked]
    facts = " ; ".join(f"{k} = {v}" for k, v in zip(keys, values, strict=True))
    return f"{facts} ; {keys[asked]} =", values[asked]


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    style = rng.randrange(4)
    if style == 0:
        return f"{a}+{b}=", str(a + b)
    if style == 1:
        return f"Input: {a} plus {b}\nTarget:", " ".join(str(a + b))
    if style == 2:
        x, y, carry = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 1)
        total = x + y + carry
        return f"{x}+{y}+c{carry}=", f"{total} w{total % 10} c{total // 10}"
    return f"the digits of {a} are", " ".join(str(a))


def _letters(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 13)))
    style = rng.randrange(4)
    if style == 0:
        shifted = "".join(chr((ord(ch) - 65 + 3) % 26 + 65) for ch in word)
        return f"CIPHERTEXT:{shifted} QUESTION: What is the plaintext? (shift 3) ANS:", f" {word}"
    if style == 1:
        return f"QUESTION: What is {word} backwards? ANS:", f" {word[::-1]}"
    if style == 2:
        return f"What is the first letter of {word}?", word[0]
    return f"spell {word}", " ".join(word)


def _tag(rng: random.Random) -> str:
    word = rng.choice(TAG_WORDS)
    hex_id = "".join(rng.choices("0123456789abcdef", k=8))
    inner = rng.choice(NAMES + THINGS + COLOUR_WORDS)
    if rng.random() < 0.5:
        return f"<{word}-{hex_id}> {inner}"
    return f"<{word}>\n{inner} {rng.randint(0, 99)}\n</{word}>"


def _repeat(rng: random.Random) -> str:
    """A random word list written twice: the second copy is predictable only by looking back,
    which is how small models learn to copy from context (induction heads)."""
    pool = NAMES + COLOUR_WORDS + ROLES + THINGS + tuple(string.ascii_uppercase)
    words = " ".join(rng.choices(pool, k=rng.randint(4, 12)))
    return f"list: {words}\nagain: {words}\n"


def _lookups(rng: random.Random) -> str:
    """Facts followed by several questions about them, each answered from the facts."""
    keys = rng.sample(NAMES + THINGS, rng.randint(3, 8))
    pool = rng.choice([COLOUR_WORDS, ROLES, PLACES, NAMES])
    facts = {key: rng.choice(pool) for key in keys}
    lines = [f"{key} is {value} ." for key, value in facts.items()]
    for key in rng.sample(keys, min(3, len(keys))):
        lines.append(f"{key} ? {facts[key]}")
    return "\n".join(lines) + "\n"


def generic_document(rng: random.Random) -> str:
    """One document of generic text; question-answer kinds are plain or chat-formatted."""
    draw = rng.random()
    if draw < 0.2:
        return _story(rng) + EOS
    if draw < 0.25:
        return "\n".join(_tag(rng) for _ in range(rng.randint(1, 4))) + EOS
    if draw < 0.4:
        return _repeat(rng) + EOS
    if draw < 0.6:
        return _lookups(rng) + EOS
    make = rng.choices([_facts, _arithmetic, _letters], weights=[3, 2, 2])[0]
    question, answer = make(rng)
    if rng.random() < 0.4:
        return render_chat(question, answer)
    return f"{question} {answer.lstrip()}\n" + EOS


def generic_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(f"pretrain-{seed}")
    return [generic_document(rng) for _ in range(n)]


# --- tokenizer and model --------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (never an unknown token), digits split one by one, with a chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.n_embd,
        # LLaMA's ~8/3 MLP ratio, rounded up to a multiple of 32.
        intermediate_size=32 * math.ceil(cfg.n_embd * 8 / 3 / 32),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=max(1, cfg.n_head // 2),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def pack(tokenizer: PreTrainedTokenizerFast, texts: list[str], seq_len: int) -> torch.Tensor:
    """All documents back to back, cut into rows of `seq_len` tokens (the tail is dropped)."""
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    rows = len(ids) // seq_len
    if rows == 0:
        raise MemgenError(f"n_docs is too small for one row of seq_len={seq_len}; raise n_docs")
    return torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)


def _learning_rate(step: int, cfg: PretrainConfig) -> float:
    return warmup_cosine(step, cfg.lr, max(1, cfg.steps // 20), cfg.steps)


@torch.no_grad()
def _mean_loss(model: LlamaForCausalLM, rows: torch.Tensor, batch_size: int) -> float:
    model.eval()
    device = next(model.parameters()).device
    batches = rows.to(device).split(batch_size)
    losses = [float(model(input_ids=b, labels=b).loss) for b in batches]
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def copy_skills(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, n: int = 150
) -> dict[str, float]:
    """Accuracy on held-out probes of copying from context, the skill a LoRA run on the
    color task builds on: continue a repeated list, answer "key ?" after "key is value ."
    facts, and answer a key-value question in the chat format."""
    rng = random.Random("pretrain-copy-probe")
    probes: dict[str, list[tuple[str, str, bool]]] = {"repeat": [], "lookup": [], "chat": []}
    for _ in range(n):
        words = _repeat(rng).split("\n")[0].removeprefix("list: ").split()
        half = len(words) // 2
        prompt = f"list: {' '.join(words)}\nagain: {' '.join(words[:half])}"
        probes["repeat"].append((prompt, words[half], False))
        *facts, last = _lookups(rng).strip().split("\n")
        key, answer = last.split(" ? ")
        probes["lookup"].append(("\n".join([*facts, f"{key} ?"]), answer, False))
        probes["chat"].append((*_facts(rng), True))
    scores = {}
    for name, rows in probes.items():
        prompts = [prompt for prompt, _, _ in rows]
        outputs = generate(model, tokenizer, prompts, max_new_tokens=3, chat=rows[0][2])
        hits = [out.split()[:1] == [ans] for out, (_, ans, _) in zip(outputs, rows, strict=True)]
        scores[name] = sum(hits) / len(hits)
    return scores


def _samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> dict[str, str]:
    """Greedy continuations of a few held-out style prompts, for a human to read."""
    prompts = [
        "Tom: red\nAnn: blue\nMax: green\nAnn?",
        "12+30=",
        render_chat("Leo likes lion. Mia likes owl. what does Mia like?", "")[: -len(EOS)],
    ]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=6)
    return dict(zip(prompts, outputs, strict=True))


def _train_base(
    model: torch.nn.Module, rows: torch.Tensor, cfg: PretrainConfig, progress: bool
) -> list[dict[str, float]]:
    """Next-token training on random packed rows; the smoothed loss 20 times along the way."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    device = next(model.parameters()).device
    curve: list[dict[str, float]] = []
    running = float("nan")
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=None if progress else True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, cfg)
        picked = torch.randint(len(rows), (cfg.batch_size,), generator=generator)
        batch = rows[picked].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        running = value if math.isnan(running) else 0.98 * running + 0.02 * value
        if (step + 1) % max(1, cfg.steps // 20) == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "train_loss": running})
            bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    return curve


def _save_base(
    out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, info: dict[str, object]
) -> None:
    """Written beside, then swapped in, so a kill never leaves a half-saved base."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)


def pretrain(out: Path, cfg: PretrainConfig, *, force: bool = False, progress: bool = True) -> Path:
    """Build the base into `out`; skipped when `out` already holds one made with `cfg`."""
    info_path = out / INFO_FILE
    wanted = cfg.model_dump(mode="json")
    if out.exists() and not info_path.is_file() and any(out.iterdir()):
        raise MemgenError(f"{out} exists and holds no {INFO_FILE}; give --out a new folder")
    if not force and info_path.is_file() and json.loads(info_path.read_text())["config"] == wanted:
        log.info("pretrain: %s is up to date, skipped", out)
        return out
    started = time.perf_counter()
    texts = generic_corpus(cfg.n_docs, cfg.seed)
    held_out = generic_corpus(200, cfg.seed + 1_000_003)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    rows = pack(tokenizer, texts, cfg.seq_len)
    eval_rows = pack(tokenizer, held_out, cfg.seq_len)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tokenizer)
    model.to(resolve_device(cfg.device))  # type: ignore[arg-type]
    n_params = sum(p.numel() for p in model.parameters())
    log.info("pretrain: %d parameters, %d rows of %d tokens", n_params, len(rows), cfg.seq_len)

    curve = _train_base(model, rows, cfg, progress)
    info = {
        "config": wanted,
        "n_params": n_params,
        "train_tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
        "corpus_tokens": rows.numel(),
        "held_out_loss": _mean_loss(model, eval_rows, cfg.batch_size),
        "curve": curve,
        "copy_skills": copy_skills(model, tokenizer),
        "samples": _samples(model, tokenizer),
        "seconds": round(time.perf_counter() - started, 1),
    }
    _save_base(out, model, tokenizer, info)
    log.info(
        "pretrain: held-out loss %.3f, copy skills %s, %.0f s -> %s",
        info["held_out_loss"],
        info["copy_skills"],
        info["seconds"],
        out,
    )
    return out
