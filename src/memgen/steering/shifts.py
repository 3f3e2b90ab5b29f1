"""Many steering vectors at once: each row of a batch carries its own shift.

A *shift* is an array [n_layers, width] added to one site kind (zeros leave a neuron
alone) at the last position: of every forward pass ("last", the paper's), or of the
prompt only ("prompt", the decision point). Comparing K settings on the same prompts
takes K generations per prompt; stacked into one batch, each row with its own shift,
they take one `generate` call instead of K, and on small models, where the cost per
call dominates, that is most of the time (benchmarks/steer_batching.py).

    shifts = np.stack([targeted, control_1, control_2])          # [K, L, W]
    outputs = generate_shifted(model, tokenizer, prompts, shifts, "resid", "last", ...)
    outputs[k][i]                                                # prompt i under shift k
    fitted, fit = fit_shifts(model, tokenizer, prompts, answers, masks, scale, "resid",
                             others=unwanted)   # fitted where each answer parts from its other
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.errors import MemgenError
from memgen.core.forks import Fork, answer_forks, fork_tokens
from memgen.core.generation import (
    encode_prompt,
    generate_batch,
    pad_id_of,
    pad_left,
)
from memgen.core.hooks import Position, edit
from memgen.core.modeling import frozen, unwrap
from memgen.core.prefix import Prefix
from memgen.core.sites import Site, SiteKind
from memgen.steering.prefix import steered_logits


class RowShifts:
    """While attached, adds `rows[i, layer]` to row i of each hooked layer's last position.

    Set `rows` ([batch, n_layers, width], or None for no change) before each forward
    pass or `generate` call. Beam search widens the batch; each beam gets its row's shift.
    `rows` [batch, copies, n_layers, width] shifts each of a row's last `copies`
    positions by its own vector (copies of one token side by side, as
    `steered_last_logits` runs them). `where` [batch, positions] (bool, set after `rows`)
    shifts every marked position of the pass instead, each by its row's vector (a
    teacher-forced answer, `memgen.steering.read`).
    """

    def __init__(self, kind: SiteKind, layers: Sequence[int], position: Position) -> None:
        if position not in ("last", "prompt"):  # a shift per row is for decision points
            raise MemgenError(f"steering position {position!r} is not 'last' or 'prompt'")
        self.kind, self.layers, self.position = kind, [int(x) for x in layers], position
        self._rows: torch.Tensor | None = None
        self.where: torch.Tensor | None = None
        # Forward passes since `rows` was set: the first is the prompt's. (Not "a pass of
        # one token": with its prefix cached, the prompt's pass is one token too.)
        self.passes = 0

    @property
    def rows(self) -> torch.Tensor | None:
        return self._rows

    @rows.setter
    def rows(self, rows: torch.Tensor | None) -> None:
        self._rows, self.passes, self.where = rows, 0, None

    def _count_pass(self, *_: object) -> None:
        self.passes += 1

    def _adder(self, layer: int):  # type: ignore[no-untyped-def]
        def add(activation: torch.Tensor) -> torch.Tensor | None:
            if self.rows is None or (self.position == "prompt" and self.passes > 0):
                return None
            if self.where is not None:
                marked = self.where[..., None].to(activation.dtype)  # [batch, positions, 1]
                return _added(activation, marked * self.rows[:, None, layer].to(activation.dtype))
            rows = self.rows if self.rows.dim() == 4 else self.rows[:, None]
            shift = rows[:, :, layer].to(activation.dtype)  # [batch, positions, width]
            span = shift.shape[1]
            if activation.shape[0] != shift.shape[0]:
                shift = shift.repeat_interleave(activation.shape[0] // shift.shape[0], dim=0)
            if torch.is_grad_enabled():  # keep the graph: a new tensor, not an in-place edit
                shifted = activation.clone()
                shifted[:, -span:] = shifted[:, -span:] + shift
                return shifted
            activation[:, -span:] += shift
            return None

        return add

    @contextmanager
    def attached(self, model: torch.nn.Module) -> Iterator[RowShifts]:
        edits = {Site(self.kind, layer): self._adder(layer) for layer in self.layers}
        counter = unwrap(model).register_forward_hook(self._count_pass)
        try:
            with edit(model, edits):
                yield self
        finally:
            counter.remove()


def _added(activation: torch.Tensor, delta: torch.Tensor) -> torch.Tensor | None:
    """`activation + delta`: a new tensor under autograd (keep the graph), else in place."""
    if torch.is_grad_enabled():
        return activation + delta
    activation += delta
    return None


def steered_layers(shifts: np.ndarray) -> list[int]:
    """Layers where any of the [K, L, W] shifts is non-zero: the only ones to hook."""
    return [int(x) for x in np.flatnonzero(np.abs(shifts).sum(axis=(0, 2)))]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_shifted(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    shifts: np.ndarray,
    kind: SiteKind,
    position: Position,
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    batch_size: int = 128,
    chat: bool = False,
    desc: str = "steer",
    items: Sequence[tuple[int, int]] | None = None,
) -> list[list[str]]:
    """outputs[k][i]: the continuation of prompt i with shifts[k] ([K, L, W]) added; only
    for the (k, i) of `items` when given (the others stay "")."""
    model.eval()
    device = _device(model)
    encoded = [encode_prompt(tokenizer, prompt, chat) for prompt in prompts]
    # Every (shift, prompt) pair, similar lengths together to waste less padding, and a
    # prompt's shifts side by side, so a chunk's prompts are few and their prefix is shared.
    every = ((k, i) for k in range(len(shifts)) for i in range(len(prompts)))
    items = sorted(
        every if items is None else items, key=lambda item: (len(encoded[item[1]]), item[1])
    )
    table = torch.as_tensor(np.asarray(shifts, dtype=np.float32), device=device)
    outputs = [[""] * len(prompts) for _ in range(len(shifts))]
    shifter = RowShifts(kind, steered_layers(shifts), position)
    chunks = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]

    def answer(chunk: list[tuple[int, int]]) -> list[str]:
        rows = [k for k, _ in chunk]
        if num_beams > 1:  # beam search expands its inputs itself; give it whole prompts
            ids, mask = pad_left([encoded[i] for _, i in chunk], pad_id_of(tokenizer), device)
            shifter.rows = table[rows]
            return generate_batch(model, tokenizer, ids, mask, max_new_tokens, num_beams)
        # A chunk holds every shift of a few prompts: run each prompt's shared part once.
        distinct = list(dict.fromkeys(i for _, i in chunk))
        shifter.rows = None
        prefix = Prefix.of(
            model, *pad_left([encoded[i] for i in distinct], pad_id_of(tokenizer), device)
        ).select([distinct.index(i) for _, i in chunk])
        shifter.rows = table[rows]
        return generate_batch(
            model, tokenizer, prefix.ids, prefix.mask, max_new_tokens, cache=prefix.cache(model)
        )

    with shifter.attached(model):
        # Under a launcher each process answers every Nth chunk; all receive every answer.
        answered = distributed.parallel_map(answer, chunks)
        rounds = zip(chunks, answered, strict=True)
        bar = tqdm(rounds, total=len(chunks), desc=desc, disable=None, leave=False)
        for chunk, texts in bar:
            for (k, i), text in zip(chunk, texts, strict=True):
                outputs[k][i] = text
    return outputs


def _over_last_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    shifts: np.ndarray,
    kind: SiteKind,
    reduce: Callable[[slice, torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    chat: bool,
    forks: Sequence[Fork] | None = None,
    position: Position = "last",
) -> list[torch.Tensor]:
    """`reduce(rows, logits)` for each chunk of prompts, in order, where `logits` [chunk,
    K + 1, vocab] are each prompt's next-token logits unsteered (row group 0) and under
    each of `shifts` [K, L, W], the shared prompt run once (`steered_logits`): after its
    last token, or, given `forks`, after the answers' shared tokens fed as generation
    would (shifted too at `position` "last", not at "prompt")."""
    model.eval()
    device = _device(model)
    encoded = [encode_prompt(tokenizer, prompt, chat) for prompt in prompts]
    zero = np.zeros_like(shifts[:1])
    table = torch.as_tensor(np.concatenate([zero, shifts]).astype(np.float32), device=device)
    per_call = max(1, batch_size // len(table))
    shifter = RowShifts(kind, steered_layers(shifts), "last")
    if forks is not None and len(forks) != len(prompts):
        raise MemgenError(f"{len(prompts)} prompts but {len(forks)} forks")
    tails = _Tails.of(
        forks or [Fork((), 0, -1)] * len(prompts), pad_id_of(tokenizer), device, position
    )

    def run(start: int) -> torch.Tensor:
        rows = slice(start, start + per_call)
        prefix = Prefix.of(model, *pad_left(encoded[rows], pad_id_of(tokenizer), device))
        logits = tails.steered(model, shifter, prefix, table, rows)
        return reduce(rows, tails.at_fork(logits, rows))

    with shifter.attached(model):
        return list(distributed.parallel_map(run, range(0, len(prompts), per_call)))


@torch.no_grad()
def next_token_kl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    shifts: np.ndarray,
    kind: SiteKind,
    *,
    batch_size: int = 128,
    chat: bool = False,
    forks: Sequence[Fork] | None = None,
    position: Position = "last",
) -> np.ndarray:
    """[K]: mean KL(unsteered || steered) of the next-token distribution after each prompt,
    or, given `forks`, at each prompt's fork (its answer's shared tokens fed after it,
    shifted as generation at `position` would), where the behaviour is decided."""
    if not prompts:
        return np.full(len(shifts), np.nan)

    def kl_sums(_: slice, logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        base = logp[:, :1]
        kl = (base.exp() * (base - logp[:, 1:])).sum(-1)  # [chunk, K]
        return kl.sum(0).double().cpu()

    parts = _over_last_logits(
        model, tokenizer, prompts, shifts, kind, kl_sums, batch_size=batch_size, chat=chat,
        forks=forks, position=position,
    )  # fmt: skip
    total = torch.zeros(len(shifts), dtype=torch.float64)
    for part in parts:  # in order, as the sum always ran
        total += part
    result: np.ndarray = (total / len(prompts)).numpy()
    return result


@torch.no_grad()
def scales_at_kl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    shifts: np.ndarray,
    target: np.ndarray,
    kind: SiteKind,
    *,
    at_one: np.ndarray | None = None,
    ceiling: float = 16.0,
    steps: int = 6,
    batch_size: int = 128,
    chat: bool = False,
    forks: Sequence[Fork] | None = None,
    position: Position = "last",
) -> np.ndarray:
    """[K]: per shift, the factor c at which `c * shift` moves the next-token distribution
    after `prompts` (at their `forks`, given) by `target[k]` (`next_token_kl`), so shifts
    can be compared at equal collateral instead of equal norm; NaN where no c up to
    `ceiling` gets there, or where a target or a KL met on the way is not finite.

    The bracket [lo, hi] (KL below the target at lo, at or above it at hi) starts at
    [0, 1], doubles hi up to `ceiling` while the KL there is short, then is halved `steps`
    times; c is interpolated linearly in KL inside it, so it is not biased toward hi (by
    up to a bracket's width) where c is small. Each probe is one `next_token_kl` call for
    all K shifts; `at_one`, the shifts' KL as they are, saves the first where the caller
    has it. KL need not grow monotonically with c; where it does not, this finds a
    crossing.
    """
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (len(shifts),):
        raise MemgenError(f"one KL target per shift is needed ({len(shifts)}, got {target.shape})")
    failed = ~np.isfinite(target)

    def checked(found: np.ndarray) -> np.ndarray:
        failed[~np.isfinite(found)] = True
        return found

    def kl(scales: np.ndarray) -> np.ndarray:
        scaled = shifts * scales[:, None, None]
        found = next_token_kl(
            model, tokenizer, prompts, scaled, kind, batch_size=batch_size, chat=chat,
            forks=forks, position=position,
        )  # fmt: skip
        return checked(found)

    lo, hi = np.zeros(len(shifts)), np.ones(len(shifts))
    kl_lo = np.zeros(len(shifts))
    kl_hi = kl(hi) if at_one is None else checked(np.array(at_one, dtype=np.float64))
    while (grow := (kl_hi < target) & (hi < ceiling)).any():
        lo[grow], kl_lo[grow] = hi[grow], kl_hi[grow]
        hi[grow] = np.minimum(2 * hi[grow], ceiling)
        kl_hi[grow] = kl(hi)[grow]
    failed |= kl_hi < target  # short even at the ceiling
    scales = _halve_and_interpolate(kl, target, (lo, hi), (kl_lo, kl_hi), steps)
    scales[failed] = np.nan
    return scales


def _halve_and_interpolate(
    kl: Callable[[np.ndarray], np.ndarray],
    target: np.ndarray,
    bracket: tuple[np.ndarray, np.ndarray],
    kl_bracket: tuple[np.ndarray, np.ndarray],
    steps: int,
) -> np.ndarray:
    """`scales_at_kl`'s brackets (and their KLs) halved `steps` times, each keeping KL
    below the target at lo and at or above it at hi; then c interpolated linearly in KL."""
    (lo, hi), (kl_lo, kl_hi) = bracket, kl_bracket
    for _ in range(steps):
        mid = (lo + hi) / 2
        kl_mid = kl(mid)
        below = kl_mid < target
        lo[below], kl_lo[below] = mid[below], kl_mid[below]
        hi[~below], kl_hi[~below] = mid[~below], kl_mid[~below]
    span = np.where(kl_hi > kl_lo, kl_hi - kl_lo, 1.0)
    scales: np.ndarray = lo + (hi - lo) * np.clip((target - kl_lo) / span, 0.0, 1.0)
    return scales


@torch.no_grad()
def fork_margins(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    wanted: Sequence[str],
    unwanted: Sequence[str],
    shifts: np.ndarray,
    kind: SiteKind,
    *,
    batch_size: int = 128,
    chat: bool = False,
    position: Position = "last",
) -> np.ndarray:
    """[K + 1, n]: logit of each wanted answer's token minus the unwanted one's where the
    two part (their shared tokens fed after the prompt, `memgen.core.forks`; NaN where
    they never do), unsteered (row 0) and under each of `shifts` [K, L, W] at `position`.

    A continuous outcome beside the flip share: a shift can move every prompt's margin a
    long way and still flip none, or flip the few that sat near zero.
    """
    if not prompts:
        return np.zeros((len(shifts) + 1, 0))
    device = _device(model)
    forks = answer_forks(tokenizer, wanted, unwanted)
    token, other = fork_tokens(forks)  # -1 where the answers never part
    up, down = (torch.from_numpy(ids).to(device).clamp(min=0) for ids in (token, other))
    parted = torch.from_numpy(token >= 0).to(device)

    def gaps(rows: slice, logits: torch.Tensor) -> torch.Tensor:
        index = torch.arange(len(logits), device=device)
        gap = logits[index, :, up[rows]] - logits[index, :, down[rows]]
        return gap.double().masked_fill(~parted[rows, None], float("nan")).cpu()

    parts = _over_last_logits(
        model, tokenizer, prompts, shifts, kind, gaps, batch_size=batch_size, chat=chat,
        forks=forks, position=position,
    )  # fmt: skip
    result: np.ndarray = torch.cat(parts).T.numpy()
    return result


@dataclass(frozen=True)
class _Tails:
    """What each prompt is fed after its last token, and what it should say there.

    `tokens` [N, T]: each fork's shared tokens, padded (None where no fork shares one);
    `lengths` [N]: where its fork is among the 1 + T positions fed; `paths` [N, 1 + T]:
    the answer's tokens up to its fork, -100 after; `position`: the positions a shift
    moves ("last": every one fed, "prompt": the prompt's last token only).
    """

    tokens: torch.Tensor | None
    lengths: torch.Tensor
    paths: torch.Tensor
    position: Position = "last"

    @classmethod
    def of(
        cls, forks: Sequence[Fork], pad: int, device: torch.device, position: Position = "last"
    ) -> _Tails:
        longest = max((len(fork.shared) for fork in forks), default=0)
        tokens = torch.full((len(forks), longest), pad, dtype=torch.long)
        paths = torch.full((len(forks), 1 + longest), -100, dtype=torch.long)
        for row, fork in enumerate(forks):
            tokens[row, : len(fork.shared)] = torch.tensor(fork.shared, dtype=torch.long)
            paths[row, : len(fork.path)] = torch.tensor(fork.path, dtype=torch.long)
        lengths = torch.tensor([len(fork.shared) for fork in forks], dtype=torch.long)
        fed = tokens.to(device) if longest else None
        return cls(fed, lengths.to(device), paths.to(device), position)

    def steered(
        self,
        model: PreTrainedModel,
        shifter: RowShifts,
        prefix: Prefix,
        shifts: torch.Tensor,
        rows: slice | np.ndarray,
    ) -> torch.Tensor:
        """`steered_logits` [n, K, 1 + T, vocab] of `rows` (`prefix`: theirs), tails fed."""
        fed = None if self.tokens is None else self.tokens[_index(rows)]
        return steered_logits(model, shifter, prefix, shifts, fed, self.position)

    def at_fork(self, logits: torch.Tensor, rows: slice | np.ndarray) -> torch.Tensor:
        """[n, K, vocab]: the logits at each row's fork, of `steered_logits`' [n, K, S, vocab]."""
        return logits[torch.arange(len(logits)), :, self.lengths[_index(rows)]]


def _index(rows: slice | np.ndarray) -> slice | torch.Tensor:
    return rows if isinstance(rows, slice) else torch.as_tensor(rows, dtype=torch.long)


def fit_shifts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    masks: np.ndarray,
    scale: np.ndarray,
    kind: SiteKind,
    *,
    budget: float | Sequence[float] | None = None,
    steps: int = 150,
    lr: float = 0.1,
    batch_size: int = 64,
    seed: int = 0,
    chat: bool = False,
    keep_prompts: Sequence[str] = (),
    keep_answers: Sequence[str] = (),
    others: Sequence[str] | None = None,
    position: Position = "last",
    metric: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """K shifts, each on its own neurons, fitted together so each makes `answers` come first.

    `masks` [K, L, W] says which neurons each shift may move, `batch_size` how many
    prompts each shift sees per step (the same ones for all); `scale` [L, W] is the unit
    each neuron's value is fitted in (its standard deviation, or ones), so one learning
    rate and one `budget` fit every neuron: a shift's values, in those units, are kept
    within an L2 ball of radius `budget` (one per shift, or one for all; None: no limit),
    or, given `metric` [L, W], `values x metric` is (`SiteStats.norm_metric`: a budget in
    push, the same on every model). Minimises the cross-entropy of each answer's first
    token at the prompt's last position, the model frozen; given `others` (the answers to
    steer away from), of each answer's tokens up to where it parts from its other
    (`memgen.core.forks`), fed after the prompt and shifted as generation would, so two
    answers that start alike are told apart where they differ (`position`: as a shift at
    "last" or at "prompt" acts there). Returns the shifts [K, L, W] in activation units
    and, per shift, the share of `prompts` whose greedy answer, with it added, is the
    answer's up to there (the in-sample fit).
    """
    if not prompts:
        raise MemgenError("no prompts to fit a shift on")
    device = _device(model)
    fit = _Values.zeros(masks, scale, _radius(budget, len(masks), device), device, metric)
    encoded = [encode_prompt(tokenizer, prompt, chat) for prompt in [*prompts, *keep_prompts]]
    forks = [*answer_forks(tokenizer, answers, others), *answer_forks(tokenizer, keep_answers)]
    tails = _Tails.of(forks, pad_id_of(tokenizer), device, position)
    shifter = RowShifts(kind, steered_layers(np.asarray(masks, dtype=np.float32)), "last")
    draws = _Draws(len(prompts), len(keep_prompts), batch_size, np.random.default_rng(seed))
    with frozen(model):
        # Every step draws from the same prompts: their shared part runs once, here.
        prefix = Prefix.of(
            model, *pad_left(encoded, pad_id_of(tokenizer), device), batch_size=batch_size
        )
        with shifter.attached(model):
            _descend(model, shifter, prefix, fit, tails, draws, steps=steps, lr=lr)
            fitted = fit.shifts().detach()
            hits = _hits(model, shifter, prefix, fitted, tails, len(prompts), draws.per_shift)
    shifts: np.ndarray = fitted.cpu().numpy().astype(np.float64)
    # Every process fits the same shifts from the same draws; they take the main one's, so
    # an ulp of summation order cannot make the processes steer with different values.
    return distributed.from_main((shifts, (hits / len(prompts)).numpy()))


def _descend(
    model: PreTrainedModel,
    shifter: RowShifts,
    prefix: Prefix,
    fit: _Values,
    tails: _Tails,
    draws: _Draws,
    *,
    steps: int,
    lr: float,
) -> None:
    """`steps` of Adam on the shifts' values, each on the next draw of prompts, each step
    followed by the projection back into the shifts' balls."""
    optimiser = torch.optim.Adam([fit.values], lr=lr)
    for _ in range(steps):
        rows = draws.next()
        logits = tails.steered(model, shifter, prefix.select(rows), fit.shifts(), rows)
        loss = _summed_loss(logits, tails.paths[_index(rows)])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        fit.project()


def _summed_loss(logits: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """The sum over shifts of each one's mean loss per prompt (the shifts do not interact):
    `logits` [prompts, shifts, S, vocab], `paths` [prompts, S] the tokens to say (-100:
    none), summed along a prompt's path."""
    wanted = paths[:, None].expand(-1, logits.shape[1], -1)
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 2), wanted.flatten(), ignore_index=-100, reduction="sum"
    )
    return loss / len(logits)


def _radius(
    budget: float | Sequence[float] | None, count: int, device: torch.device
) -> torch.Tensor | None:
    """Each shift's L2 radius (None: no limit), checked positive and finite."""
    if budget is None:
        return None
    sizes = np.broadcast_to(np.asarray(budget, dtype=np.float32), (count,)).copy()
    radius = torch.as_tensor(sizes, device=device)
    if not bool((radius > 0).all() and radius.isfinite().all()):
        raise MemgenError(f"a fitting budget must be positive and finite (got {budget})")
    return radius


@dataclass(frozen=True)
class _Values:
    """K shifts being fitted, in units of `unit`, each moving only its `allowed` neurons and
    held within `radius` as `metric` measures it."""

    values: torch.Tensor  # [K, L, W], trained
    allowed: torch.Tensor
    unit: torch.Tensor
    radius: torch.Tensor | None
    metric: torch.Tensor  # [L, W]: what one fitted unit of each neuron counts in the budget

    @classmethod
    def zeros(
        cls,
        masks: np.ndarray,
        scale: np.ndarray,
        radius: torch.Tensor | None,
        device: torch.device,
        metric: np.ndarray | None = None,
    ) -> _Values:
        allowed, unit, measure = (
            torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)
            for a in (masks, scale, np.ones_like(scale) if metric is None else metric)
        )
        return cls(torch.zeros_like(allowed, requires_grad=True), allowed, unit, radius, measure)

    def shifts(self) -> torch.Tensor:
        """The shifts in activation units."""
        return self.values * self.allowed * self.unit

    def project(self) -> None:
        """Each shift scaled back into its L2 ball (the nearest point of it where `metric` is
        uniform)."""
        if self.radius is None:
            return
        with torch.no_grad():
            measured = self.values * self.allowed * self.metric
            norms = measured.flatten(1).norm(dim=1).clamp(min=1e-12)
            self.values.mul_((self.radius / norms).clamp(max=1.0).view(-1, 1, 1))


class _Draws:
    """The rows of each fitting step: `batch_size` prompts (and as many kept prompts)."""

    def __init__(self, n: int, n_keep: int, batch_size: int, rng: np.random.Generator) -> None:
        self.n, self.n_keep, self.rng = n, n_keep, rng
        self.per_shift, self.per_keep = min(n, batch_size), min(n_keep, batch_size)

    def next(self) -> np.ndarray:
        rows = self.rng.choice(self.n, self.per_shift, replace=False)
        if self.per_keep:
            kept = self.n + self.rng.choice(self.n_keep, self.per_keep, replace=False)
            rows = np.concatenate([rows, kept])
        return rows


@torch.no_grad()
def _hits(
    model: PreTrainedModel,
    shifter: RowShifts,
    prefix: Prefix,
    fitted: torch.Tensor,
    tails: _Tails,
    n_prompts: int,
    batch: int,
) -> torch.Tensor:
    """Per shift, how many of the prompts now say their answer up to its fork."""
    hits = torch.zeros(len(fitted))
    for start in range(0, n_prompts, batch):
        rows = np.arange(start, min(start + batch, n_prompts))
        logits = tails.steered(model, shifter, prefix.select(rows), fitted, rows)
        paths = tails.paths[_index(rows)][:, None]  # [rows, 1, S]
        said = (logits.argmax(-1) == paths) | (paths == -100)  # [rows, K, S]
        hits += said.all(-1).sum(0).cpu()
    return hits
