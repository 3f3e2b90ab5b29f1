"""Stage `train`: GPT-2 from scratch, or LoRA on a pretrained model, with checkpoint selection.

    memgen train --run-dir runs/color                       # GPT-2 from scratch
    memgen train --run-dir runs/color train.model=PATH      # LoRA on a HF causal LM
    memgen train --run-dir runs/mix-color task=color train.model=runs/mix/train/model train.steps=0
                                                            # a trained model, as it is

Writes `train/model/` (the kept checkpoint, `save_pretrained` safetensors and the
tokenizer), `history.json`, `curve.png`. Killed runs resume from
`train/checkpoints/last` when the same command is run again.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.artifacts import Step, file_hash, json_hash, write_json
from memgen.core.config import RunConfig
from memgen.core.device import resolve_device, resolve_dtype
from memgen.core.errors import MemgenError
from memgen.core.examples import Example, read_split
from memgen.core.generation import encode_example, encode_prompt
from memgen.core.gguf import gguf_identity, is_gguf_source
from memgen.core.modeling import load_pretrained, load_trained, scratch_gpt2
from memgen.tasks.base import Task, make_task
from memgen.tasks.tokenizer import build_tokenizer
from memgen.train import checkpoint
from memgen.train.curve import plot_curve
from memgen.train.loop import COPY_MAX_WORDS, Decoder, Evaluation, evaluate, kept_index, train
from memgen.train.lora import add_lora, save_model

log = logging.getLogger(__name__)


# The files of a Hugging Face model folder that decide what the model computes.
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_BASE_FILES = (
    "*.safetensors", "config.json", "generation_config.json", "tokenizer*",
    "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt",
)  # fmt: skip


def base_identity(name_or_path: str) -> dict[str, str]:
    """A local base folder's model-file hashes, so rebuilding the base re-runs training;
    a GGUF's name and sha256.

    A hub name stands for itself (the hub cache pins its files).
    """
    if is_gguf_source(name_or_path):
        return gguf_identity(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return {"name": name_or_path}
    files = {p for pattern in _BASE_FILES for p in path.glob(pattern) if p.is_file()}
    return {p.name: file_hash(p) for p in sorted(files)}


def decoder_of(cfg: RunConfig) -> Decoder:
    """`behave`'s decoding, so the checkpoint is chosen the way it is then measured."""
    return Decoder(cfg.behave.num_beams, cfg.behave.max_new_tokens)


def base_identity_of(cfg: RunConfig) -> dict[str, object]:
    """A fine-tuned base's files are part of training's identity; scratch has none."""
    return {} if cfg.train.model == "scratch" else {"base": base_identity(cfg.train.model)}


def build_model(
    cfg: RunConfig, task: Task, examples: list[Example], device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tc = cfg.train
    torch.manual_seed(cfg.seed)
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    if tc.model == "scratch":
        tokenizer = build_tokenizer(task.tokenizer_spec())
        longest = max(len(encode_example(tokenizer, ex, False, "answer")[0]) for ex in examples)
        # Room for pair twins and steering prompts a little longer than the data.
        longest = max(longest, 2 * COPY_MAX_WORDS) if tc.copy_warmup else longest
        n_positions = 32 * math.ceil((longest + task.max_new_tokens + 16) / 32)
        model = scratch_gpt2(
            len(tokenizer), n_positions, tc.n_layer, tc.n_embd, tc.n_head, tokenizer
        )
    else:
        model, tokenizer = load_pretrained(
            tc.model,
            dtype=resolve_dtype(tc.dtype, device),
            trust_remote_code=tc.trust_remote_code,
            device_map=tc.device_map,
        )
        model = add_lora(model, tc.lora)
    if tc.device_map is None:  # else from_pretrained has placed it
        model.to(device)  # type: ignore[arg-type]  # transformers types `to` oddly
    return model, tokenizer


def keep_as_it_is(
    cfg: RunConfig, task: Task, examples: list[Example], dev: list[Example], out: Path
) -> tuple[list[Evaluation], PreTrainedModel]:
    """`train.steps=0`: the model at `train.model`, measured once on dev and kept unchanged.

    A local folder (a full model or a LoRA adapter) is copied file by file, so the kept
    model has the same bytes, and `memgen compare` sees the same weights.
    """
    tc, device = cfg.train, resolve_device(cfg.device)
    source = Path(tc.model).expanduser()
    dtype = resolve_dtype(tc.dtype, device)
    model, tokenizer = (
        load_trained(
            source,
            dtype=dtype,
            trust_remote_code=tc.trust_remote_code,
            device=device,
            device_map=tc.device_map,
        )
        if source.is_dir()
        else load_pretrained(
            tc.model, dtype=dtype, trust_remote_code=tc.trust_remote_code, device_map=tc.device_map
        )
    )
    if not source.is_dir() and tc.device_map is None:
        model.to(device)  # type: ignore[arg-type]
    unknown = tokenizer.unk_token_id
    if unknown is not None and any(
        unknown in encode_prompt(tokenizer, ex.prompt, tc.chat) for ex in examples
    ):
        raise MemgenError(
            f"the tokenizer of {tc.model} does not cover task {cfg.task!r}: analyse a model "
            "trained on this task, with the data options it was trained with"
        )
    history = [
        Evaluation(
            step=0, loss=None, **evaluate(model, tokenizer, task, dev, tc.chat, decoder_of(cfg))
        )
    ]
    if distributed.is_main():
        kept, tmp = out / "model", out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if source.is_dir():
            tmp.mkdir()
            for pattern in (*_BASE_FILES, *_ADAPTER_FILES):
                for file in source.glob(pattern):
                    if file.is_file():
                        shutil.copy2(file, tmp / file.name)
        else:  # a hub name: its cached files, as loaded
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(kept, ignore_errors=True)
        tmp.rename(kept)
    return history, model


def _begin(step: Step, state_dir: Path, identity: str) -> Path:
    """Open the stage's folder, dropping the run's checkpoints where another config (or
    --force) made them: every process resumes from the step the main process saved in
    `state_dir` (the others write their own files to a scratch folder)."""
    out = step.stage.begin()
    if distributed.is_main() and (
        step.force or not checkpoint.made_by(state_dir / "checkpoints" / "last", identity)
    ):
        if not step.force:
            log.info("train: the saved checkpoint was made with another config; from step 0")
        shutil.rmtree(state_dir / "checkpoints", ignore_errors=True)
    distributed.barrier()
    return out


def run_train(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    data = step.inputs["data"]
    task = make_task(cfg.task, cfg.data.options)
    train_examples = read_split(data.path, "train")
    dev_examples = read_split(data.path, "dev")
    test_examples = read_split(data.path, "test")
    # The run folder's checkpoints, in every process.
    state_dir = step.run_dir / "train"
    identity = json_hash(stage.identity(step.config, list(step.inputs.values())))
    if cfg.train.steps == 0:  # no training: only the prompts it will answer must fit
        out = _begin(step, state_dir, identity)
        history, model = keep_as_it_is(cfg, task, dev_examples + test_examples, dev_examples, out)
        _finish(step, cfg, history, model, out)
        return
    # Loaded before the stage opens its folder: a base that cannot load (a truncated file,
    # an unreachable hub) leaves a finished training and its checkpoint as they were.
    device = resolve_device(cfg.device)
    model, tokenizer = build_model(cfg, task, train_examples + dev_examples + test_examples, device)
    out = _begin(step, state_dir, identity)
    best_dir = out / "model"

    def save_best(trained: PreTrainedModel) -> None:
        tmp = out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(trained, tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(best_dir, ignore_errors=True)
        tmp.rename(best_dir)

    history = train(
        model,
        tokenizer,
        task,
        train_examples,
        dev_examples,
        cfg.train,
        seed=cfg.seed,
        out_dir=state_dir,
        save_best=save_best,
        decoder=decoder_of(cfg),
        progress=True,
        identity=identity,
    )
    _finish(step, cfg, history, model, out)


def _finish(
    step: Step, cfg: RunConfig, history: list[Evaluation], model: PreTrainedModel, out: Path
) -> None:
    """The history, its curve and the stage's summary, for a trained or a kept model."""
    rows = [vars(e) for e in history]
    best = history[kept_index(history, cfg.train)]
    write_json(out / "history.json", rows)
    plot_curve(rows, best.step, out / "curve.png", f"{cfg.task}: behaviour on dev prompts")
    summary = {
        "best": vars(best),
        "final": rows[-1],
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)
        if cfg.train.steps
        else 0,
    }
    step.finish(summary)
    log.info(
        "train: kept step %d of %d trained (gen %.2f, mem %.2f, other %.2f)",
        best.step,
        history[-1].step,
        best.gen,
        best.mem,
        best.other,
    )
    if best.score(cfg.train.select, cfg.train.max_other)[1] == 0:
        # Every evaluation lacks one behaviour (for a mixture: in some task), so the kept
        # step is only the first; `behave` will find few flips or none.
        log.warning(
            "train: no evaluation on dev showed both behaviours%s; train longer, or change "
            "the task's trigger share (data.options) or learning rate",
            " in every task" if best.by_task else "",
        )
