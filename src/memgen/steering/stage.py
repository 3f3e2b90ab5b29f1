"""Stage `steer`: every steering method tuned on one split, reported on another, with controls.

    memgen steer --run-dir runs/cipher 'steer.methods=[nmd_sd,fitted]'

The protocol. The flipped pairs chose the neurons and gave NMD. The test prompts the
unsteered model answered by memory (for mem -> gen) or by rule (gen -> mem) are split
in two halves: on the *tuning* half each method's setting (neuron set or layer, size,
position) is chosen (screened first on a few prompts, memgen/steering/tuning.py), and
`fitted` is fitted; on the *held-out* half every reported rate
is measured, with its 95% interval and n. Beside each chosen setting, on the same
held-out prompts: a *matched* control (as many random neurons per layer, or a random
direction, given the same treatment, over `steer.draws` draws) and the paper's
controls. Side effects on training prompts the model already answers with the target
behaviour: *retention* (the same answer under steering) and the next-token KL.

The best method per direction (chosen on tuning) is saved as a steering file,
`best/<direction>`, that `memgen.load_steering` reads and `memgen.steer` applies.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from memgen.core.artifacts import Step, write_json
from memgen.core.config import RunConfig, set_name
from memgen.core.examples import Behaviour, Example, read_split, read_test_answers
from memgen.core.forks import forks_toward
from memgen.core.hooks import Position
from memgen.core.modeling import load_run_model, model_identity
from memgen.core.neuron_set import NeuronSet, read_scores
from memgen.core.recorded import read_record
from memgen.core.rows import (
    Controls,
    Direction,
    Matched,
    ShiftSize,
    SideEffect,
    Spread,
    SteeringRow,
    Tuning,
    dump_rows,
)
from memgen.core.sites import SiteKind
from memgen.core.stats import SHARE, intervals, prediction_interval, rank_p_value, rates, summarise
from memgen.steering.bench import DIRECTIONS, Bench, tuning_and_held_out
from memgen.steering.figures import plot_steering
from memgen.steering.methods import (
    METHODS,
    Method,
    SiteStats,
    Toward,
    layer_masks,
    paper_control,
    shift_size,
)
from memgen.steering.saved import Steering
from memgen.steering.shifts import fit_shifts, next_token_kl
from memgen.steering.tuning import Bounds, Candidate, Tried, per_position, tune
from memgen.tasks.base import make_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SideSet:
    """Training prompts the unsteered model answers with one behaviour (`toward`), and its
    answers."""

    examples: list[Example]
    answers: list[str]
    toward: Toward

    def retention(self, bench: Bench, shifts: np.ndarray, position: Position) -> list[float]:
        """Per shift: the share of these prompts whose answer stays the same."""
        if not self.examples:
            return [float("nan")] * len(shifts)
        return [
            float(np.mean([a.strip() == b.strip() for a, b in zip(row, self.answers, strict=True)]))
            for row in bench.outputs(self.examples, shifts, position)
        ]


def side_sets(
    bench: Bench, trained: Sequence[Example], toward: Toward, n: int, seed: int
) -> tuple[SideSet, SideSet]:
    """(tuning, held-out) halves of `n` training prompts taught `toward` and answered so.

    Twice as many taught prompts are tried: a checkpoint kept while memory is still
    rising answers only some of its memorized prompts by memory.
    """
    taught = [ex for ex in trained if bench.task.label(ex, ex.completion) == toward][: 2 * n]
    answers = bench.unsteered(taught)
    kept = [
        (ex, out)
        for ex, out in zip(taught, answers, strict=True)
        if bench.task.label(ex, out) == toward
    ][:n]
    first, second = tuning_and_held_out(len(kept), seed)
    pick = [
        SideSet([kept[i][0] for i in rows], [kept[i][1] for i in rows], toward)
        for rows in (first, second)
    ]
    return pick[0], pick[1]


class MethodRunner:
    """Builds each method's candidates and its matched controls for one direction."""

    def __init__(
        self,
        stats: SiteStats,
        sets: dict[str, NeuronSet],
        bench: Bench,
        fitting: list[Example],
        keep: SideSet,
        cfg: RunConfig,
    ) -> None:
        self.stats, self.sets, self.bench = stats, sets, bench
        self.fitting, self.keep, self.cfg = fitting, keep, cfg
        self.masks = {}
        for name, neuron_set in sets.items():
            mask = np.zeros(stats.shape, dtype=bool)
            mask[neuron_set.layers, neuron_set.neurons] = True
            self.masks[name] = mask

    def fit(self, masks: np.ndarray, budgets: Any, toward: Toward) -> np.ndarray:
        answers = [ex.answer(toward) for ex in self.fitting]
        sc = self.cfg.steer
        shifts, _ = fit_shifts(
            self.bench.model,
            self.bench.tokenizer,
            [ex.prompt for ex in self.fitting],
            answers,
            masks,
            self.stats.unit(),
            self.stats.kind,
            budget=budgets,
            steps=sc.fit_steps,
            lr=sc.fit_lr,
            batch_size=sc.fit_batch,
            seed=self.cfg.seed,
            chat=self.cfg.train.chat,
            keep_prompts=[ex.prompt for ex in self.keep.examples],
            keep_answers=self.keep.answers,
            others=[ex.other_answer(toward) for ex in self.fitting],
            metric=self.stats.norm_metric() if sc.budget_unit == "norm" else None,
        )
        return shifts

    def candidates(self, method: Method, toward: Toward) -> list[Candidate]:
        sizes: list[float] = list(getattr(self.cfg.steer, method.grid))
        out: list[Candidate] = []
        if method.dense:
            for layer in range(self.stats.shape[0]):
                for size in sizes:
                    shift = method.dense_shifts(self.stats, [layer], size, toward)[0]
                    out.append(Candidate(method.name, f"layer {layer}", size, shift))
            return out
        assert method.sparse is not None
        selections = self.masks
        if method.whole_layers:
            selections = {f"layer {i}": m for i, m in enumerate(layer_masks(self.stats.shape))}
        grid = [(name, size) for name in selections for size in sizes]
        masks = np.stack([selections[name] for name, _ in grid])
        shifts = method.sparse(self.stats, masks, np.array([s for _, s in grid]), toward, self.fit)
        for (name, size), shift in zip(grid, shifts, strict=True):
            out.append(Candidate(method.name, name, size, shift, selections[name]))
        return out

    def matched(
        self, method: Method, chosen: Candidate, toward: Toward, rng: np.random.Generator
    ) -> np.ndarray:
        """[draws, L, W]: the chosen setting's treatment given to random neurons or directions."""
        return method.matched(
            self.stats, chosen.shift, chosen.mask, chosen.size, toward, self.cfg.steer.draws,
            rng, self.fit,
        )  # fmt: skip


def held_out_line(row: SteeringRow) -> str:
    """One aligned line a person reads: `mem->gen  fitted  top10  size 16  last  gen 99.5%
    [97.2, 99.9] n=200 | matched random 99.6% (rank p = 0.67 of 5 draws)` (size: the
    method's alpha or budget)."""
    toward = row.toward
    low, high = row.ci[toward]
    arrow = row.direction.replace("_to_", "->")
    setting = f"{row.method:12} {row.selection:8} size {row.size:<5g} {row.position:6}"
    matched = row.controls.matched
    by_directions = METHODS.get(row.method).controlled_by_directions
    control = "random direction, unfitted," if by_directions else "matched random"
    return (
        f"{arrow:8} {setting} {toward} {100 * row.targeted[toward]:5.1f}% "
        f"[{100 * low:.1f}, {100 * high:.1f}] n={row.n_prompts} | {control} "
        f"{100 * matched.target.mean:.1f}% (rank p = {matched.p_value:.2f} of "
        f"{len(matched.target_per_draw)} draws)"
    )


@dataclass
class _Steer:
    """What every direction and method of one `steer` run uses."""

    cfg: RunConfig
    bench: Bench
    stats: SiteStats
    sets: dict[str, NeuronSet]
    score: np.ndarray
    kind: SiteKind
    rng: np.random.Generator
    bounds: Bounds
    accuracy_set: list[Example]
    taught: list[Behaviour]

    def train_accuracy(self, shifts: np.ndarray, position: Position) -> list[float]:
        """Share of training prompts answered as taught (an intended flip counts as a miss)."""
        if not self.accuracy_set:
            return [float("nan")] * len(shifts)
        return [
            float(
                np.mean(
                    [got == want != "other" for got, want in zip(row, self.taught, strict=True)]
                )
            )
            for row in self.bench.labels(self.accuracy_set, shifts, position)
        ]


def _direction_prompts(
    labelled: Sequence[tuple[Example, str]], source: str, n: int, seed: int
) -> tuple[list[Example], list[Example], dict[str, list[int]]] | None:
    """(tuning, held out, their rows of test_outputs.jsonl) of one direction; None: too few."""
    index = [i for i, (_, label) in enumerate(labelled) if label == source][:n]
    if len(index) < 4:
        return None
    tune_rows, held_rows = tuning_and_held_out(len(index), seed)
    tuning = [labelled[index[i]][0] for i in tune_rows]
    held_out = [labelled[index[i]][0] for i in held_rows]
    rows = {"tuning": [index[i] for i in tune_rows], "held_out": [index[i] for i in held_rows]}
    return tuning, held_out, rows


def _sweep_rows(
    direction: str, method: str, screened: list[Tried], tried: list[Tried]
) -> list[dict[str, Any]]:
    return [
        {
            "direction": direction,
            "method": method,
            "selection": t.candidate.selection,
            "size": t.candidate.size,
            "position": t.position,
            "split": split,
            "n_prompts": len(t.labels),
            "rates": t.rates,
            "retention": t.retention,
            "push": t.push,
        }
        for split, group in (("screen", screened), ("tuning", tried))
        for t in group
    ]


def _matched(
    labels: list[list[str]], toward: str, retention: list[float], targeted: float
) -> Matched:
    """The matched control's draws: the share moved per draw, and their prompts pooled,
    with the targeted share's rank among them."""
    draws = [rates(lab)[toward] for lab in labels]
    return Matched(
        rates=rates([x for lab in labels for x in lab]),
        target_per_draw=draws,
        target=Spread(**summarise(draws, SHARE)),
        retention_per_draw=retention,
        p_value=rank_p_value(targeted, draws),
        prediction=prediction_interval(draws, SHARE),
    )


def _side_effect(
    run: _Steer,
    side_held: SideSet,
    shift: np.ndarray,
    position: Position,
    retention: float,
    baseline: float,
) -> SideEffect:
    """What the chosen shift does to training prompts the model answers with the target."""
    kl = next_token_kl(
        run.bench.model,
        run.bench.tokenizer,
        [ex.prompt for ex in side_held.examples],
        shift,
        run.kind,
        batch_size=run.cfg.behave.batch_size,
        chat=run.cfg.train.chat,
        forks=forks_toward(run.bench.tokenizer, side_held.examples, side_held.toward),
        position=position,
    )
    return SideEffect(
        retention=retention,
        n_retention=len(side_held.examples),
        kl=float(kl[0]),
        train_accuracy=run.train_accuracy(shift, position)[0],
        baseline=baseline,
    )


def _held_out_row(
    run: _Steer,
    direction: Direction,
    method: Method,
    pick: Tried,
    runner: MethodRunner,
    held_out: list[Example],
    side_held: SideSet,
    baseline_accuracy: float,
) -> SteeringRow:
    """The chosen setting held out, beside its matched control and the paper's controls."""
    sc, toward, chosen = run.cfg.steer, DIRECTIONS[direction][1], pick.candidate
    matched = runner.matched(method, chosen, toward, run.rng)
    paper = (
        []
        if method.dense or method.whole_layers
        else [
            paper_control(k, chosen.shift, run.score, run.stats.nmd, toward, run.rng)
            for k in sc.controls
        ]
    )
    shifts = np.stack([chosen.shift, *matched, *paper])
    labels = run.bench.labels(held_out, shifts, pick.position)
    target, matched_labels = labels[0], labels[1 : 1 + len(matched)]
    kept = side_held.retention(run.bench, shifts[: 1 + len(matched)], pick.position)
    control = _matched(matched_labels, toward, kept[1:], rates(target)[toward])
    ci = intervals(target)
    upper = control.target.ci_high
    draws = control.target_per_draw
    return SteeringRow(
        direction=direction,
        method=method.name,
        selection=chosen.selection,
        top_n=run.sets[chosen.selection].top_n if chosen.selection in run.sets else None,
        size=chosen.size,
        position=pick.position,
        n_prompts=len(held_out),
        targeted=rates(target),
        ci=ci,
        tuning=Tuning(n_prompts=len(pick.labels), rates=pick.rates, retention=pick.retention),
        n_neurons=int(np.count_nonzero(chosen.shift)),
        shift=ShiftSize(**shift_size(chosen.shift, run.stats)),
        controls=Controls(
            matched=control,
            **{
                k: rates(lab)
                for k, lab in zip(sc.controls, labels[1 + len(matched) :], strict=False)
            },
        ),
        side_effect=_side_effect(
            run, side_held, shifts[:1], pick.position, kept[0], baseline_accuracy
        ),
        control_kind=method.control_kind,
        beats_matched=bool(ci[toward][0] > (upper if upper is not None else draws[0])),
    )


def _save_best(
    run: _Steer,
    direction: Direction,
    chosen_rows: list[tuple[Tried, SteeringRow]],
    retention: Callable[[list[Tried]], list[float]],
    out: Path,
) -> SteeringRow:
    """Of the methods' held-out rows, the one `Bounds.choose` picks on tuning, saved."""
    winner = run.bounds.choose([t for t, _ in chosen_rows], DIRECTIONS[direction][1], retention)
    row = next(r for t, r in chosen_rows if t is winner)
    meta = {
        "direction": row.direction,
        "method": row.method,
        "selection": row.selection,
        "size": row.size,
        "toward": row.toward,
        "held_out": row.targeted,
        "n_held_out": row.n_prompts,
        "ci": row.ci,
        "task": run.cfg.task,
    }
    steering = Steering(
        model_identity(run.bench.model), run.kind, winner.position, winner.candidate.shift, meta
    )
    steering.save(out / "best" / direction)
    return row.model_copy(update={"file": f"best/{direction}"})


def _setup(step: Any) -> tuple[_Steer, list[tuple[Example, Behaviour]], list[Example]]:
    cfg = step.cfg
    names = ("data", "train", "behave", "record", "neurons")
    data, train, behave, record, neurons = (step.inputs[name] for name in names)
    sc = cfg.steer
    task = make_task(cfg.task, cfg.data.options)
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    kind = cast(SiteKind, cfg.neurons.site)
    sets = {set_name(f): NeuronSet.load(neurons.path / set_name(f)) for f in cfg.neurons.top_n}
    for neuron_set in sets.values():
        neuron_set.check_compatible(model)
    stats = SiteStats.from_record(read_record(record.path), kind)
    score = read_scores(neurons.path)["score"]
    labelled = read_test_answers(behave.path)
    trained = read_split(data.path, "train")
    bench = Bench(model, tokenizer, task, cfg, kind)
    bounds = Bounds(sc.max_other, sc.min_retention, sc.screen_prompts, sc.screen_keep)
    accuracy_set = trained[: sc.n_side_effect]
    taught = [task.label(ex, ex.completion) for ex in accuracy_set]
    run = _Steer(
        cfg,
        bench,
        stats,
        sets,
        score,
        kind,
        np.random.default_rng(cfg.seed),
        bounds,
        accuracy_set,
        taught,
    )
    return run, labelled, trained


def run_steer(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    methods = [METHODS.get(name) for name in cfg.steer.methods]
    run, labelled, trained = _setup(step)
    out = stage.begin()
    baseline_accuracy = run.train_accuracy(np.zeros((1, *run.stats.shape)), "last")[0]
    rows: list[SteeringRow] = []
    best: dict[str, SteeringRow] = {}
    splits: dict[str, dict[str, list[int]]] = {}  # direction -> rows of test_outputs.jsonl
    sweep: list[dict[str, Any]] = []  # every setting tried, on (part of) the tuning split
    for direction, (source, toward) in DIRECTIONS.items():
        found = _direction_prompts(labelled, source, cfg.steer.n_prompts, cfg.seed)
        if found is None:
            log.warning("steer: too few test prompts answered %r; %s skipped", source, direction)
            continue
        tuning, held_out, splits[direction] = found
        side_tune, side_held = side_sets(
            run.bench, trained, toward, cfg.steer.n_side_effect, cfg.seed
        )
        runner = MethodRunner(run.stats, run.sets, run.bench, tuning, side_tune, cfg)
        retention = functools.partial(_retention, run.bench, side_tune)
        chosen_rows: list[tuple[Tried, SteeringRow]] = []
        for method in methods:
            log.info("steer: %s, tuning %s on %d prompts", direction, method.name, len(tuning))
            pick, screened, tried = tune(
                run.bench,
                runner.candidates(method, toward),
                cfg.steer.positions,
                tuning,
                toward,
                run.bounds,
                retention,
                lambda shift: shift_size(shift, run.stats)["relative_norm"],
            )
            sweep += _sweep_rows(direction, method.name, screened, tried)
            row = _held_out_row(
                run, direction, method, pick, runner, held_out, side_held, baseline_accuracy
            )
            rows.append(row)
            chosen_rows.append((pick, row))
            log.info("steer  %s", held_out_line(row))
        if chosen_rows:
            best[direction] = _save_best(run, direction, chosen_rows, retention, out)
            _warn_if_idle(best[direction], run.bounds)
    written = {
        "rows": dump_rows(rows),
        "best": {d: r.model_dump(mode="json") for d, r in best.items()},
    }
    write_json(out / "steering.json", {**written, "splits": splits, "sweep": sweep})
    plot_steering(rows, out / "steering.png")
    step.finish(written)
    for row in best.values():
        log.info("steer  best  %s", held_out_line(row))


def _warn_if_idle(best: SteeringRow, bounds: Bounds) -> None:
    """A best that moved no tuning prompt is what the limits left, not a result to report."""
    if best.tuning.rates[best.toward] == 0:
        log.warning(
            "steer: the setting chosen %s moved no tuning prompt (limits: other <= %g, "
            "retention >= %g), so best/%s does nothing; widen steer's sizes (alphas, budgets)",
            best.direction.replace("_", " "), bounds.max_other, bounds.min_retention,
            best.direction,
        )  # fmt: skip


def _retention(bench: Bench, side: SideSet, settings: list[Tried]) -> list[float]:
    """Retention on the tuning side-effect prompts, batched per position."""
    settings_at = [(t.candidate, t.position) for t in settings]
    return per_position(settings_at, functools.partial(side.retention, bench))
