"""The home-made pretrained base: its tokenizer covers the tasks, its chat template renders,
and a tiny run saves a Hugging Face folder that loads and LoRA-tunes."""

import json
from pathlib import Path

import pytest
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from typer.testing import CliRunner

from memgen.cli import app
from memgen.core.artifacts import file_hash
from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.core.generation import encode_prompt
from memgen.core.modeling import load_trained
from memgen.pipeline import run_stage
from memgen.tasks import make_task
from memgen.train.pretrain import (
    ASSISTANT,
    EOS,
    PretrainConfig,
    generic_corpus,
    load_pretrain_config,
    pretrain,
    render_chat,
    train_tokenizer,
)

TINY_BASE = ["n_docs=300", "vocab_size=400", "n_layer=1", "n_embd=32", "n_head=2",
             "seq_len=32", "steps=3", "batch_size=4"]  # fmt: skip


@pytest.fixture(scope="module")
def default_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer `memgen pretrain` makes with its default settings."""
    cfg = PretrainConfig()
    return train_tokenizer(generic_corpus(cfg.n_docs, cfg.seed), cfg.vocab_size)


@pytest.mark.parametrize("task_name", ["color", "math", "cipher"])
def test_tokenizer_covers_every_task(
    default_tokenizer: PreTrainedTokenizerFast, task_name: str
) -> None:
    tokenizer = default_tokenizer
    task = make_task(task_name)
    pairs = task.pairs(0)
    scored = task.test_set(100, 0) + [twin for _, twin in (next(pairs) for _ in range(50))]
    examples = task.train_set(300, 0) + scored
    for ex in examples:
        for text in (ex.prompt, ex.completion):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            # Byte-level BPE has no unknown token: every text decodes back exactly.
            assert tokenizer.decode(ids) == text
    for ex in scored:
        for answer in (ex.mem_answer, ex.gen_answer):
            # Generation stops at the task's budget, so every scored answer must fit in it.
            assert (
                len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= task.max_new_tokens
            )
    # The corpus is generic text, not the tasks' prompts.
    corpus = set(generic_corpus(2000, 0))
    assert not any(ex.prompt in doc for ex in examples[:100] for doc in corpus)


def test_chat_template_renders_as_the_corpus_writes_it(
    default_tokenizer: PreTrainedTokenizerFast,
) -> None:
    tokenizer = default_tokenizer
    question = "Tom: red\nAnn: blue\nAnn?"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    assert rendered + "blue" + EOS == render_chat(question, "blue")
    ids = encode_prompt(tokenizer, question, chat=True)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[-2:]) == [ASSISTANT, "Ċ"]
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_corpus_is_deterministic_per_seed() -> None:
    assert generic_corpus(50, 3) == generic_corpus(50, 3)
    assert generic_corpus(50, 3) != generic_corpus(50, 4)
    docs = generic_corpus(500, 0)
    assert all(doc.endswith(EOS) for doc in docs)


def test_tiny_pretrain_saves_a_loadable_deterministic_base(tmp_path: Path) -> None:
    base = tmp_path / "base"
    result = CliRunner().invoke(app, ["pretrain", "--out", str(base), *TINY_BASE])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template and tokenizer.eos_token == EOS and tokenizer.pad_token
    info = json.loads((base / "pretrain.json").read_text())
    assert info["config"]["steps"] == 3 and info["held_out_loss"] > 0
    assert set(info["copy_skills"]) == {"repeat", "lookup", "chat"}
    assert all(0 <= v <= 1 for v in info["copy_skills"].values())
    assert (base / "model.safetensors").is_file()

    # Same seed, same bytes; a matching folder is not rebuilt.
    again = pretrain(tmp_path / "again", load_pretrain_config(TINY_BASE))
    assert file_hash(again / "model.safetensors") == file_hash(base / "model.safetensors")
    mtime = (base / "model.safetensors").stat().st_mtime_ns
    pretrain(base, load_pretrain_config(TINY_BASE))
    assert (base / "model.safetensors").stat().st_mtime_ns == mtime

    # LoRA on it, with its chat template and the loss on the whole sequence.
    run = tmp_path / "run"
    cfg = load_config(None, [
        f"train.model={base}", "train.loss_on=sequence", "data.n_train=32", "data.n_test=8",
        "data.n_dev=8", "train.steps=2", "train.eval_every=2", "train.batch_size=4",
        "train.warmup_steps=1", "train.max_other=1.0", "device=cpu",
    ])  # fmt: skip
    run_stage("data", run, cfg)
    stage = run_stage("train", run, cfg)
    assert (stage.path / "model" / "adapter_config.json").is_file()
    _, adapter_tokenizer = load_trained(stage.path / "model")
    assert adapter_tokenizer.chat_template == tokenizer.chat_template


def test_bad_pretrain_input_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(MemgenError, match=r"unknown key 'layers'.*n_layer"):
        load_pretrain_config(["layers=2"])
    with pytest.raises(MemgenError, match="n_embd=30"):
        load_pretrain_config([*TINY_BASE, "n_embd=30", "n_head=4"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(MemgenError, match="new folder"):
        pretrain(tmp_path / "mine", load_pretrain_config(TINY_BASE))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("command", ["pretrain", "compare"])
def test_commands_keep_library_bars_off_a_log(command: str, tmp_path: Path) -> None:
    """transformers' "Loading weights" bars would fill a log that is not a terminal."""
    from transformers.utils import logging as hf_logging

    args = {
        "pretrain": ["pretrain", "--out", str(tmp_path / "base"), "layers=2"],
        "compare": ["compare", str(tmp_path / "a"), str(tmp_path / "b")],
    }[command]
    hf_logging.enable_progress_bar()
    try:
        result = CliRunner().invoke(app, args)  # both stop on their bad input
        assert result.exit_code != 0
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
