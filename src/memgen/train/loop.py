"""The training loop shared by GPT-2-from-scratch and LoRA fine-tuning.

AdamW, linear warm-up then cosine decay to 10%, gradient clipping; optionally, first
`copy_warmup` steps of copying word lists (induction, for models from scratch). Every
`eval_every` steps it generates on dev prompts (with the decoder `behave` measures
with), labels the answers and keeps the
checkpoint that shows both behaviours best; with `patience` it stops once that
checkpoint has gone unbeaten for that many evaluations. Batches and dropout are drawn from
(seed, step), and the checkpoint holds weights, AdamW moments and history, so a
killed run resumes to bit-identical results.

The loop runs through `accelerate.Accelerator`: one process as plain PyTorch, or under
`accelerate launch` data-parallel, each process taking every Nth row of each
micro-batch. The loss is summed over a process's answer tokens and divided by the whole
micro-batch's count, so the averaged gradient is the one-process gradient (up to float
summation order); dropout masks are drawn per process, so with dropout the runs differ
as two seeds do. Evaluation splits the dev prompts across the processes too, so every
process keeps the same history, and the main one alone writes checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.answers import answer_batch, decoder_and_head, logits_where
from memgen.core.config import TrainConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.core.forks import fork_offsets
from memgen.core.generation import encode_example, encode_prompt, pad_id_of
from memgen.core.reading import label_examples
from memgen.core.stats import rates
from memgen.tasks.base import Task
from memgen.train import checkpoint

log = logging.getLogger(__name__)


def _score(shares: Mapping[str, float], rule: str, max_other: float) -> tuple[bool, float]:
    gen, mem = shares["gen"], shares["mem"]
    value = gen * mem if rule == "gen_x_mem" else min(gen, mem)
    return shares["other"] <= max_other, value


@dataclass(frozen=True)
class Evaluation:
    step: int
    loss: float | None  # the running training loss; None for a model not trained here
    gen: float
    mem: float
    other: float
    # A mixture's rates per component task; empty for a single task.
    by_task: dict[str, dict[str, float]] = field(default_factory=dict)

    def score(self, rule: str, max_other: float) -> tuple[bool, float, float]:
        """(within max_other, value, tie-break): higher is better; too many 'other' rank last.

        A mixture scores as its worst task (every task must show both behaviours), ties
        broken by the mean over tasks: while one task has no memory yet all score 0, and
        the first evaluation would be kept.
        """
        if not self.by_task:
            ok, value = _score(vars(self), rule, max_other)
            return ok, value, value
        scores = [_score(shares, rule, max_other) for shares in self.by_task.values()]
        values = [value for _, value in scores]
        return all(ok for ok, _ in scores), min(values), sum(values) / len(values)

    def summary(self) -> str:
        """One line for a log: gen / mem / other in percent, per task for a mixture."""
        rows = self.by_task or {"": vars(self)}
        return ", ".join(
            f"{task + ' ' if task else ''}{100 * r['gen']:.0f}/{100 * r['mem']:.0f}/"
            f"{100 * r['other']:.0f}"
            for task, r in rows.items()
        )

    def most_mem(self) -> float:
        """The memory share, of the task that shows most for a mixture."""
        return max((shares["mem"] for shares in self.by_task.values()), default=self.mem)


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
    within `max_other` have not beaten it.

    The learning-rate schedule still spans `cfg.steps`, so stopping early keeps the same
    checkpoint a full run would have kept, unless a later evaluation would have beaten it.
    """
    if cfg.patience is None or not history:
        return False
    best_at = kept_index(history, cfg)
    eligible, value, _ = history[best_at].score(cfg.select, cfg.max_other)
    # Patience counts from a checkpoint that shows both behaviours (a positive score):
    # before memory appears every evaluation ties at 0, and stopping there keeps a
    # model that only generalizes. It counts only evaluations within `max_other`: while
    # memory takes over, `other` passes through a peak (partial recall), and counting
    # those stopped seed 2 of the cipher recipe at a checkpoint with 2% memory.
    later = [e for e in history[best_at + 1 :] if e.score(cfg.select, cfg.max_other)[0]]
    return eligible and value > 0 and len(later) >= cfg.patience


def evaluation_due(step: int, history: Sequence[Evaluation], cfg: TrainConfig) -> bool:
    """Every `eval_every` steps, and every `dense_eval_every` once memory has appeared.

    Never during the copy warm-up; always at the last step.
    Both behaviours can coexist for only a few hundred steps (memory rising, the rule not
    yet forgotten); evaluating densely from the first sign of memory, and from then on,
    catches that window on any seed. A function of the history alone, so a resumed run
    evaluates alike.
    """
    if step == cfg.steps:
        return True
    if step <= cfg.copy_warmup:  # still copying word lists: nothing to measure yet
        return False
    every = cfg.eval_every
    if cfg.dense_eval_every is not None and any(e.most_mem() >= cfg.dense_from for e in history):
        every = cfg.dense_eval_every
    return step % every == 0


def warmup_cosine(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it by step `total`.

    transformers' `get_cosine_with_min_lr_schedule_with_warmup` is the same curve (its
    warm-up starts one step lower), but as a scheduler object it carries state that every
    checkpoint would have to save; as a function of the step, a resumed run needs none.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    return warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.steps)


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


COPY_MAX_WORDS = 20  # the longest copy list: rows are twice as long


def word_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's ids that are words: no special or added tokens."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return sorted(set(tokenizer.get_vocab().values()) - special)


def copy_rows(
    words: Sequence[int], n: int, seed: int, step: int
) -> list[tuple[list[int], list[int]]]:
    """One step's `n` word lists written twice, labelled on the second copy: (ids, labels).

    Drawn from (seed, step) alone, so a resumed run, and the same step split into
    micro-batches, sees the same lists.
    """
    rng = random.Random(f"copy-{seed}-{step}")
    rows = []
    for _ in range(n):
        first = [rng.choice(words) for _ in range(rng.randint(6, COPY_MAX_WORDS))]
        rows.append((first + first, [-100] * len(first) + first))
    return rows


class RowLosses(torch.nn.Module):
    """Cross-entropy summed over each row's labelled tokens (each position predicts the next).

    The output head runs only at the labelled positions: on a pretrained model the head is
    a vocabulary-wide matmul (49,152 x 576 on SmolLM2) at every position, most of a LoRA
    step's time when the loss is on a short answer (benchmarks/stages.py). Architectures
    whose head does more than a linear map of the decoder's output (logit soft-capping,
    scaling) take the full logits. The trained model is `lm`; this wrapper is what the
    accelerator prepares, so data-parallel hooks see every forward pass.
    """

    def __init__(self, lm: torch.nn.Module, fork_weight: float = 1.0) -> None:
        super().__init__()
        self.lm = lm
        self._split = decoder_and_head(lm)  # a tuple: not registered twice as submodules
        self.fork_weight = fork_weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        fork_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[rows] summed losses; `fork_at` [rows] is where each row's fork token sits
        (its position in `input_ids`; -1: none), weighted `fork_weight`."""
        targets = labels[:, 1:]
        scored = targets != -100
        logits = logits_where(self.lm, self._split, input_ids, attention_mask, scored)
        per_token = torch.nn.functional.cross_entropy(
            logits.float(), targets[scored], reduction="none"
        )
        if fork_at is not None:
            weights = torch.ones(targets.shape, dtype=per_token.dtype, device=per_token.device)
            rows = (fork_at > 0).nonzero()[:, 0]
            weights[rows, fork_at[rows] - 1] = self.fork_weight  # target i is token i + 1
            per_token = per_token * weights[scored]
        rows = torch.zeros(len(labels), dtype=per_token.dtype, device=per_token.device)
        return rows.index_add(0, scored.nonzero()[:, 0], per_token)


def _n_targets(labels: list[int]) -> int:
    """Tokens the causal LM loss scores: labels after the first (it predicts the next)."""
    return sum(1 for label in labels[1:] if label != -100)


def loss_denominator(labels: Sequence[list[int]], mean: str) -> float:
    """What the micro-batch's loss is averaged over: its labelled tokens or its examples.

    `labels` are the whole micro-batch's rows, over every process, so each process's
    share (`batch_loss`) adds up to one mean whichever process holds which rows.
    """
    return float(sum(map(_n_targets, labels)) if mean == "token" else len(labels))


def batch_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], denominator: float, mean: str
) -> torch.Tensor:
    """This process's share of the micro-batch's mean loss (`loss_denominator`): summed over
    tokens (`mean="token"`) or over rows each first averaged over its own tokens. `model`
    is a (prepared) `RowLosses`."""
    rows = model(**batch)
    if mean == "example":
        counts = (batch["labels"][:, 1:] != -100).sum(dim=1).clamp(min=1)
        rows = rows / counts
    return rows.sum() / denominator


def _accelerator(cfg: TrainConfig, device: torch.device) -> Accelerator:
    """The launcher's processes (or one), with the config's mixed precision.

    memgen places the model itself (`resolve_device`), so an explicit `cuda:1` holds.
    accelerate keeps its settings for the life of a process; a lone process (a notebook,
    the tests) that trains again with other settings starts them afresh.
    """
    if distributed.world_size() == 1:
        AcceleratorState._reset_state()
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision, device_placement=False
    )


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    chat: bool,
    decoder: Decoder,
) -> dict[str, Any]:
    """Rates on `examples`, with `by_task` per component for a mixture."""
    labelled = label_examples(model, tokenizer, task, examples, decoder, chat=chat)
    shares: dict[str, Any] = rates(row.label for row in labelled)
    parts = task.split_by_task(examples)
    if len(parts) > 1:
        shares["by_task"] = {
            name: rates(labelled[i].label for i in positions) for name, _, positions in parts
        }
    return shares


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    # Biases and norms are not decayed (the usual GPT recipe).
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


@dataclass
class _Progress:
    """Where a training run stands: the step to start at, its evaluations, the best score."""

    start: int
    history: list[Evaluation]
    best: tuple[bool, float, float] | None
    running: float  # the smoothed training loss (nan before the first step)

    def smooth(self, loss: float) -> None:
        self.running = loss if math.isnan(self.running) else 0.95 * self.running + 0.05 * loss

    def add(self, record: Evaluation, cfg: TrainConfig) -> tuple[Evaluation, bool]:
        """Append an evaluation; whether it beats every earlier one (then it is kept)."""
        self.history.append(record)
        score = record.score(cfg.select, cfg.max_other)
        improved = self.best is None or score > self.best
        self.best = score if improved else self.best
        return record, improved


def _report(bar: Any, record: Evaluation, improved: bool) -> None:
    if bar.disable:  # no terminal (a log file, a batch job): one line per evaluation
        log.info(
            "step %d: loss %.3f, dev gen/mem/other %% %s%s",
            record.step,
            record.loss,
            record.summary(),
            " (kept)" if improved else "",
        )
    bar.set_postfix(
        loss=f"{record.loss:.3f}",
        gen=f"{record.gen:.2f}",
        mem=f"{record.mem:.2f}",
        other=f"{record.other:.2f}",
    )


def _resume(last: Path, model: torch.nn.Module, optimizer: Any, cfg: TrainConfig) -> _Progress:
    start, history = 0, []
    if last.is_dir():
        meta = checkpoint.load(last, model, optimizer)
        start = meta["step"]
        history = [Evaluation(**row) for row in meta["history"]]
        log.info("resuming from step %d (%s)", start, last)
    if stalled(history, cfg):
        start = cfg.steps  # killed after stopping early: nothing left to do
    best = max((e.score(cfg.select, cfg.max_other) for e in history), default=None)
    running = history[-1].loss if history and history[-1].loss is not None else float("nan")
    return _Progress(start, history, best, running)


@dataclass(frozen=True)
class _Rows:
    """The training rows of a run, and how a step picks its micro-batches from them."""

    encoded: list[tuple[list[int], list[int]]]
    fork_at: list[int]  # each row's fork token's position in its ids; empty: not weighted
    words: list[int]
    pad_id: int
    device: torch.device
    seed: int

    @classmethod
    def of(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
        cfg: TrainConfig,
        device: torch.device,
        seed: int,
        groups: Sequence[Sequence[int]] | None = None,
    ) -> _Rows:
        """`groups`: the positions of each component task's examples (a mixture's)."""
        encoded = [encode_example(tokenizer, ex, cfg.chat, cfg.loss_on) for ex in examples]
        fork_at: list[int] = []
        if cfg.fork_weight != 1:
            offsets = fork_offsets(tokenizer, examples, groups)
            prompts = [len(encode_prompt(tokenizer, ex.prompt, cfg.chat)) for ex in examples]
            ends = [len(ids) for ids, _ in encoded]  # a completion too short has no fork
            at = [p + o for p, o in zip(prompts, offsets, strict=True)]
            fork_at = [
                a if o >= 0 and a < end else -1 for a, o, end in zip(at, offsets, ends, strict=True)
            ]
        words = word_ids(tokenizer) if cfg.copy_warmup else []
        return cls(encoded, fork_at, words, pad_id_of(tokenizer), device, seed)

    def micro_batches(
        self, step: int, cfg: TrainConfig
    ) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
        """This process's share of each micro-batch of `step`, with the loss denominator."""
        processes, me = distributed.world_size(), distributed.rank()
        copying = step < cfg.copy_warmup
        per_step = cfg.batch_size * cfg.grad_accum
        copies = copy_rows(self.words, per_step, self.seed, step) if copying else []
        for micro in range(cfg.grad_accum):
            if copying:
                source = copies
                rows = list(range(micro * cfg.batch_size, (micro + 1) * cfg.batch_size))
            else:
                source, task_step = self.encoded, step - cfg.copy_warmup
                rows = _batch_indices(
                    len(self.encoded), cfg.batch_size, task_step, micro, cfg.grad_accum, self.seed
                )
            mine = rows[me::processes]
            batch = answer_batch(source, mine, self.pad_id, self.device)
            if self.fork_at and not copying:
                at = [self.fork_at[i] for i in mine]
                batch["fork_at"] = torch.tensor(at, device=self.device)
            yield batch, loss_denominator([source[i][1] for i in rows], cfg.loss_mean)


def _train_step(
    model: torch.nn.Module,
    optimizer: Any,
    accelerator: Accelerator,
    rows: _Rows,
    step: int,
    cfg: TrainConfig,
    params: list[torch.nn.Parameter],
) -> float:
    """One optimizer step over `cfg.grad_accum` micro-batches: the step's mean loss."""
    model.train()  # evaluation between steps leaves it in eval mode
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    torch.manual_seed(rows.seed * 1_000_003 + step)  # dropout, reproducible across resumes
    processes = distributed.world_size()
    total = 0.0
    for micro, (batch, denominator) in enumerate(rows.micro_batches(step, cfg)):
        syncing = micro == cfg.grad_accum - 1  # all-reduce gradients once per step
        with accelerator.no_sync(model) if not syncing else contextlib.nullcontext():
            # Data-parallel averages gradients over processes; times N undoes that.
            loss = batch_loss(model, batch, denominator, cfg.loss_mean) * processes
            accelerator.backward(loss / cfg.grad_accum)
        total += float(loss.detach()) / processes / cfg.grad_accum
    accelerator.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return distributed.all_sum(total)  # alone: the value itself


def _check_batch(cfg: TrainConfig) -> None:
    if cfg.batch_size < distributed.world_size():
        raise MemgenError(
            f"train.batch_size {cfg.batch_size} is below the {distributed.world_size()} "
            "processes launched; each needs at least one row: raise it or launch fewer"
        )


def _progress_bar(start: int, steps: int, progress: bool) -> tqdm[int]:
    return tqdm(
        range(start, steps),
        initial=start,
        total=steps,
        desc="train",
        disable=None if progress else True,
    )


def _save_last(
    last: Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    history: list[Evaluation],
    identity: str,
) -> None:
    """The checkpoint a killed run resumes from: weights, optimizer, every evaluation."""
    meta = {"step": history[-1].step, "history": [vars(e) for e in history], "identity": identity}
    checkpoint.save(last, model, optimizer, meta)


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
    identity: str = "",
) -> list[Evaluation]:
    """Train in place; call `save_best` whenever the selection score improves. `decoder`
    is how answers are generated at each evaluation (greedy by default); pass the one
    that will measure the kept checkpoint, so it is chosen under the same decoding.

    Resumes from `out_dir/checkpoints/last` when it exists; `identity` (the run's config
    and inputs) is saved with each checkpoint, so a caller can tell whose it is.
    """
    device = next(model.parameters()).device
    accelerator = _accelerator(cfg, device)
    decoder = decoder or Decoder()
    groups = [positions for _, _, positions in task.split_by_task(train_examples)]
    rows = _Rows.of(tokenizer, train_examples, cfg, device, seed, groups)
    params = [p for p in model.parameters() if p.requires_grad]  # clipped in this order
    optimizer = _optimizer(model, cfg)
    last = out_dir / "checkpoints" / "last"
    state = _resume(last, model, optimizer, cfg)
    _check_batch(cfg)
    # `model` is what is evaluated and saved: never the data-parallel wrapper.
    wrapped, optimizer = accelerator.prepare(RowLosses(model, cfg.fork_weight), optimizer)
    bar = _progress_bar(state.start, cfg.steps, progress)
    for step in bar:
        total = _train_step(wrapped, optimizer, accelerator, rows, step, cfg, params)
        if step == cfg.copy_warmup:  # the task's loss starts afresh, not from copying's
            state.running = float("nan")
        state.smooth(total)
        done = step + 1
        if not evaluation_due(done, state.history, cfg):
            continue
        shares = evaluate(model, tokenizer, task, dev_examples, cfg.chat, decoder)
        record, improved = state.add(Evaluation(step=done, loss=state.running, **shares), cfg)
        if accelerator.is_main_process:
            if improved:
                save_best(model)
            _save_last(last, model, optimizer, state.history, identity)
        accelerator.wait_for_everyone()
        _report(bar, record, improved)
        if stalled(state.history, cfg):
            log.info(
                "stopping at step %d: %d evaluations without a better checkpoint",
                done,
                cfg.patience,
            )
            break
    bar.close()
    return state.history
