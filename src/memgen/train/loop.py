"""The training loop shared by GPT-2-from-scratch and LoRA fine-tuning.

AdamW, linear warm-up then cosine decay to 10%, gradient clipping. Every
`eval_every` steps it generates on dev prompts (with the decoder `behave` measures
with), labels the answers and keeps the
checkpoint that shows both behaviours best; with `patience` it stops once that
checkpoint has gone unbeaten for that many evaluations. Batches and dropout are drawn from
(seed, step), and the checkpoint holds weights, AdamW moments and history, so a
killed run resumes to bit-identical results.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.config import TrainConfig
from memgen.core.examples import Example
from memgen.core.generation import encode_example, label_examples, pad_id_of
from memgen.core.modeling import unwrap
from memgen.core.stats import rates
from memgen.tasks.base import Task
from memgen.train import checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    step: int
    loss: float
    gen: float
    mem: float
    other: float

    def score(self, rule: str, max_other: float) -> tuple[bool, float]:
        """Higher is better; checkpoints with too many 'other' answers rank last."""
        value = self.gen * self.mem if rule == "gen_x_mem" else min(self.gen, self.mem)
        return self.other <= max_other, value


@dataclass(frozen=True)
class Decoder:
    """How evaluation generates: beams (1 = greedy), a token cap (0 = the task's own), rows."""

    num_beams: int = 1
    max_new_tokens: int = 0
    batch_size: int = 256


def kept_index(history: Sequence[Evaluation], cfg: TrainConfig) -> int:
    """Position of the kept evaluation in `history`: the first with the best score."""
    scores = [e.score(cfg.select, cfg.max_other) for e in history]
    return scores.index(max(scores))


def stalled(history: Sequence[Evaluation], cfg: TrainConfig) -> bool:
    """Whether the kept checkpoint shows both behaviours and `cfg.patience` evaluations
    have not beaten it.

    The learning-rate schedule still spans `cfg.steps`, so stopping early keeps the same
    checkpoint a full run would have kept, unless a later evaluation would have beaten it.
    """
    if cfg.patience is None or not history:
        return False
    best_at = kept_index(history, cfg)
    eligible, value = history[best_at].score(cfg.select, cfg.max_other)
    # Patience counts from a checkpoint that shows both behaviours (a positive score):
    # before memory appears every evaluation ties at 0, and stopping there keeps a
    # model that only generalizes.
    return eligible and value > 0 and len(history) - 1 - best_at >= cfg.patience


def evaluation_due(step: int, history: Sequence[Evaluation], cfg: TrainConfig) -> bool:
    """Every `eval_every` steps, and every `dense_eval_every` once memory has appeared.

    Both behaviours can coexist for only a few hundred steps (memory rising, the rule not
    yet forgotten); evaluating densely from the first sign of memory catches that window
    on any seed. A function of the history alone, so a resumed run evaluates alike.
    """
    if step == cfg.steps:
        return True
    every = cfg.eval_every
    if cfg.dense_eval_every is not None and history and history[-1].mem >= cfg.dense_from:
        every = cfg.dense_eval_every
    return step % every == 0


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _batch(
    encoded: Sequence[tuple[list[int], list[int]]],
    indices: list[int],
    pad_id: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Right-padded batch: positions start at 0 in every row, as in unpadded generation."""
    width = max(len(encoded[i][0]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), -100, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        seq, lab = encoded[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(seq)] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
    }


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of one epoch (cached: every batch of the epoch walks it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _batch_indices(
    n: int, batch_size: int, step: int, micro: int, accum: int, seed: int
) -> list[int]:
    """Examples for one micro-batch: a seeded permutation per epoch, walked in order."""
    per_step = batch_size * accum
    start = step * per_step + micro * batch_size
    out = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, n)
        out.append(int(_epoch_order(n, seed, epoch)[offset]))
    return out


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    chat: bool,
    decoder: Decoder,
) -> dict[str, float]:
    labelled = label_examples(model, tokenizer, task, examples, decoder, chat=chat)
    return rates(row.label for row in labelled)


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    train_examples: Sequence[Example],
    dev_examples: Sequence[Example],
    cfg: TrainConfig,
    *,
    seed: int,
    out_dir: Path,
    save_best: Callable[[PreTrainedModel], None],
    decoder: Decoder | None = None,
    progress: bool = True,
) -> list[Evaluation]:
    """Train in place; call `save_best` whenever the selection score improves.

    `decoder` is how answers are generated at each evaluation (greedy by default); pass the
    one that will measure the kept checkpoint, so it is chosen under the same decoding.

    Resumes from `out_dir/checkpoints/last` when it exists.
    """
    device = next(model.parameters()).device
    # transformers picks the loss from the head's class name, and GPT-2's (GPT2LMHeadModel)
    # names none: it warns "unrecognized" and falls back to the causal LM loss. Name it.
    head = unwrap(model)
    if getattr(head, "loss_type", None) is None:
        head.loss_type = "ForCausalLM"
    chat = cfg.chat
    decoder = decoder or Decoder()
    encoded = [encode_example(tokenizer, ex, chat, cfg.loss_on) for ex in train_examples]
    pad_id = pad_id_of(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    # Biases and norms are not decayed (the usual GPT recipe).
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    last = out_dir / "checkpoints" / "last"
    history: list[Evaluation] = []
    start = 0
    if last.is_dir():
        meta = checkpoint.load(last, model, optimizer)
        start = meta["step"]
        history = [Evaluation(**row) for row in meta["history"]]
        log.info("resuming from step %d (%s)", start, last)
    best = max((e.score(cfg.select, cfg.max_other) for e in history), default=None)

    if stalled(history, cfg):
        start = cfg.steps  # killed after stopping early: nothing left to do
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="train",
        disable=None if progress else True,
    )
    running = history[-1].loss if history else float("nan")
    model.train()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        torch.manual_seed(seed * 1_000_003 + step)  # dropout, reproducible across resumes
        total = 0.0
        for micro in range(cfg.grad_accum):
            rows = _batch_indices(len(encoded), cfg.batch_size, step, micro, cfg.grad_accum, seed)
            loss = model(**_batch(encoded, rows, pad_id, device)).loss / cfg.grad_accum
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running = total if math.isnan(running) else 0.95 * running + 0.05 * total
        done = step + 1
        if evaluation_due(done, history, cfg):
            shares = evaluate(model, tokenizer, task, dev_examples, chat, decoder)
            model.train()
            record = Evaluation(step=done, loss=running, **shares)
            history.append(record)
            score = record.score(cfg.select, cfg.max_other)
            if best is None or score > best:
                best = score
                save_best(model)
            checkpoint.save(
                last, model, optimizer, {"step": done, "history": [vars(e) for e in history]}
            )
            bar.set_postfix(
                loss=f"{running:.3f}",
                gen=f"{record.gen:.2f}",
                mem=f"{record.mem:.2f}",
                other=f"{record.other:.2f}",
            )
            if stalled(history, cfg):
                log.info(
                    "stopping at step %d: %d evaluations without a better checkpoint",
                    done,
                    cfg.patience,
                )
                break
    bar.close()
    return history
