"""Stage `specificity`: do the selected neurons steer better than random ones of the same size?

    memgen specificity --run-dir runs/cipher 'specificity.sizes=[0.01,0.05]'

For each site, scorer, set size (top-N% by |score|), budget and direction: the `fitted`
method on the top-N% neurons, and on `draws` random sets with as many neurons per
layer, each fitted the same way (same prompts, steps and budget), all in one batch. The
fits use the tuning half of the test prompts (the split `steer` uses); the shares are
measured on the held-out half. A curve of targeted vs matched random over set size
answers the question at equal size and push; `specificity.png` draws it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from transformers import PreTrainedModel

from memgen.core.artifacts import Step, write_json
from memgen.core.config import SpecificityConfig
from memgen.core.examples import Example, read_test_answers
from memgen.core.forks import forks_toward
from memgen.core.modeling import load_run_model
from memgen.core.recorded import read_record
from memgen.core.rows import Direction, SpecificityRow, Spread, dump_rows, with_holm
from memgen.core.sites import SiteKind, write_norms
from memgen.core.stats import SHARE, prediction_interval, rank_p_value, rates, summarise, wilson
from memgen.neurons.attribution import site_score
from memgen.neurons.selection import select_top
from memgen.steering.bench import DIRECTIONS, Bench, tuning_and_held_out
from memgen.steering.methods import SiteStats, matched_masks
from memgen.steering.shifts import fit_shifts, fork_margins, next_token_kl, scales_at_kl
from memgen.tasks.base import make_task

log = logging.getLogger(__name__)
COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")


def run_specificity(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    train, behave, record = (step.inputs["train"], step.inputs["behave"], step.inputs["record"])
    spec, sc = cfg.specificity, cfg.steer
    task = make_task(cfg.task, cfg.data.options)
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    recorded = read_record(record.path)
    labelled = read_test_answers(behave.path)
    splits = _splits(labelled, sc.n_prompts, cfg.seed)
    # Collateral is measured where a shift toward a behaviour should change nothing: on
    # prompts the model already answers with it (none of them is fitted on), as many as
    # steer's held-out side effects use.
    kl_examples = {
        toward: [ex for ex, label in labelled if label == toward][: sc.n_side_effect // 2]
        for _, toward in DIRECTIONS.values()
    }
    out = stage.begin()
    rng = np.random.default_rng(cfg.seed)
    rows: list[SpecificityRow] = []
    for site in spec.sites:
        kind = cast(SiteKind, site)
        stats = SiteStats.from_record(recorded, kind)
        bench = Bench(model, tokenizer, task, cfg, kind)
        unit = _unit(stats, spec.units, model, kind)
        for scorer in spec.scorers:
            score = site_score(scorer, recorded, site)
            targeted, masks = _masks(score, spec, stats.shape, rng)
            for direction, (fitting, held_out) in splits.items():
                toward = DIRECTIONS[direction][1]
                answers = [ex.answer(toward) for ex in fitting]
                for budget in spec.budgets:
                    log.info("specificity: %s %s %s budget %g", site, scorer, direction, budget)
                    shifts, _ = fit_shifts(
                        model,
                        tokenizer,
                        [ex.prompt for ex in fitting],
                        answers,
                        masks,
                        unit,
                        kind,
                        budget=budget,
                        steps=sc.fit_steps,
                        lr=sc.fit_lr,
                        batch_size=spec.fit_batch,
                        seed=cfg.seed,
                        chat=cfg.train.chat,
                        others=[ex.other_answer(toward) for ex in fitting],
                        position=spec.position,
                    )
                    outcomes = _measure(
                        bench, held_out, kl_examples[toward], shifts, direction, spec
                    )
                    common = {"site": site, "scorer": scorer, "direction": direction}
                    rows += _size_rows(outcomes, spec, targeted, toward, held_out, common, budget)
    rows = with_holm(rows)
    write_json(out / "specificity.json", {"rows": dump_rows(rows)})
    plot_specificity(rows, out / "specificity.png")
    step.finish({"rows": dump_rows(rows)})


@dataclass(frozen=True)
class _Outcomes:
    """What K fitted shifts (per size: the top set, then its draws) did to a cell's prompts."""

    labels: list[list[str]]  # [K][n held out]
    gains: np.ndarray  # [K, n held out]: logit gap moved toward the target, per prompt
    # whose two answers part somewhere (`memgen.core.forks`)
    kl: np.ndarray  # [K]: next-token KL on prompts already at the target (NaN: none)
    # [K]: each shift's factor to reach its size's top-set KL (1 for the top sets; NaN
    # where it could not), and the mean gap moved with the shift so scaled.
    scales: np.ndarray
    mean_gains_at_kl: np.ndarray


def _measure(
    bench: Bench,
    held_out: Sequence[Example],
    kl_examples: Sequence[Example],
    shifts: np.ndarray,
    direction: Direction,
    spec: SpecificityConfig,
) -> _Outcomes:
    """Each shift's held-out answers; how far it moves each held-out prompt's logit gap
    toward the target answer where the two answers part (the target's token there minus
    the source answer's, `fork_margins`); its KL on `kl_examples`, at their forks from the
    source answer (`next_token_kl`); and the gap moved by each draw scaled to its size's
    top-set KL. Shifts are fitted, and the gap and the KL read, as `specificity.position`
    steers: at every token fed ("last") or at the prompt's last one ("prompt")."""
    source, toward = DIRECTIONS[direction]
    model, tokenizer, kind, cfg = bench.model, bench.tokenizer, bench.kind, bench.cfg
    batch, chat = cfg.steer.batch_size, cfg.train.chat

    def gains(scaled: np.ndarray) -> np.ndarray:
        margins = fork_margins(
            model,
            tokenizer,
            [ex.prompt for ex in held_out],
            [ex.answer(toward) for ex in held_out],
            [ex.answer(source) for ex in held_out],
            scaled,
            kind,
            batch_size=batch,
            chat=chat,
            position=spec.position,
        )
        moved: np.ndarray = margins[1:] - margins[0]
        return moved[:, np.isfinite(margins).all(axis=0)]  # answers that never part: no gap

    labels = bench.labels(held_out, shifts, spec.position)
    moved = gains(shifts)
    kl_prompts = [ex.prompt for ex in kl_examples]
    forks = forks_toward(tokenizer, kl_examples, toward)
    pos = spec.position
    kl = next_token_kl(
        model, tokenizer, kl_prompts, shifts, kind, batch_size=batch, chat=chat, forks=forks,
        position=pos,
    )  # fmt: skip
    scales, at_kl = np.ones(len(shifts)), moved.mean(axis=1)  # the top sets: as fitted
    if not kl_prompts:
        scales[:] = at_kl[:] = np.nan
        return _Outcomes(labels, moved, kl, scales, at_kl)
    draws = np.arange(len(shifts)) % (1 + spec.draws) != 0
    target = np.repeat(kl[:: 1 + spec.draws], 1 + spec.draws)  # each draw: its top set's
    scales[draws] = scales_at_kl(
        model, tokenizer, kl_prompts, shifts[draws], target[draws], kind,
        at_one=kl[draws], batch_size=batch, chat=chat, forks=forks, position=pos,
    )  # fmt: skip
    scaled = shifts[draws] * np.nan_to_num(scales[draws])[:, None, None]
    at_kl[draws] = np.where(np.isnan(scales[draws]), np.nan, gains(scaled).mean(axis=1))
    return _Outcomes(labels, moved, kl, scales, at_kl)


def _unit(stats: SiteStats, units: str, model: PreTrainedModel, kind: SiteKind) -> np.ndarray:
    """The scale of one budget unit per neuron (`specificity.units`)."""
    if units == "layer":
        return stats.layer_unit()
    if units == "write":
        return stats.write_unit(write_norms(model, kind))
    return stats.unit()


def plot_specificity(rows: Sequence[SpecificityRow], path: Path) -> None:
    """Targeted vs matched random share moved, over set size; one panel per site x direction."""
    panels = sorted({(r.site, r.direction) for r in rows})
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), dpi=120, squeeze=False
    )
    for ax, (site, direction) in zip(axes[0], panels, strict=False):
        target = "gen" if direction == "mem_to_gen" else "mem"
        for (scorer, budget), color in zip(
            sorted({(r.scorer, r.budget) for r in rows}), COLORS, strict=False
        ):
            sub = sorted(
                (
                    r
                    for r in rows
                    if (r.site, r.direction, r.scorer, r.budget)
                    == (site, direction, scorer, budget)
                ),
                key=lambda r: r.size,
            )
            sizes = [100 * r.size for r in sub]
            ax.plot(
                sizes,
                [100 * r.targeted[target] for r in sub],
                "o-",
                color=color,
                label=f"{scorer} top-N, budget {budget:g}",
            )
            ax.plot(
                sizes,
                [100 * r.matched.mean for r in sub],
                "o--",
                color=color,
                alpha=0.6,
                label=f"its matched random, budget {budget:g}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("neurons moved (% of the site)")
        ax.set_ylabel(f"held-out prompts → {target} (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{site}: {direction.replace('_', ' ')}", fontsize=10)
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _splits(
    labelled: Sequence[tuple[Example, str]], n_prompts: int, seed: int
) -> dict[Direction, tuple[list[Example], list[Example]]]:
    """Per direction, its source prompts halved: (fitted on, held out); too few: none."""
    splits: dict[Direction, tuple[list[Example], list[Example]]] = {}
    for direction, (source, _) in DIRECTIONS.items():
        prompts = [ex for ex, label in labelled if label == source][:n_prompts]
        if len(prompts) < 4:
            log.warning("specificity: too few %r prompts; %s skipped", source, direction)
            continue
        tune_rows, held_rows = tuning_and_held_out(len(prompts), seed)
        splits[direction] = ([prompts[i] for i in tune_rows], [prompts[i] for i in held_rows])
    return splits


def _masks(
    score: np.ndarray, spec: SpecificityConfig, shape: tuple[int, ...], rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
    """The top set of each size, and every mask fitted: per size the top set, then its
    matched random draws."""
    targeted = []
    for size in spec.sizes:
        layers, neurons = select_top(score, size)
        mask = np.zeros(shape, dtype=bool)
        mask[layers, neurons] = True
        targeted.append(mask)
    masks = np.concatenate(
        [np.concatenate([m[None], matched_masks(m, spec.draws, rng)]) for m in targeted]
    )
    return targeted, masks


def _size_rows(
    outcomes: _Outcomes,
    spec: SpecificityConfig,
    targeted: list[np.ndarray],
    toward: str,
    held_out: Sequence[Example],
    common: dict[str, Any],
    budget: float,
) -> list[SpecificityRow]:
    """One row per set size: the top set's held-out rates beside its matched draws'."""
    rows = []
    per_size = 1 + spec.draws
    for s, size in enumerate(spec.sizes):
        cell = slice(s * per_size, (s + 1) * per_size)  # the top set, then its draws
        group = outcomes.labels[cell]
        hits = sum(label == toward for label in group[0])
        draws = [rates(g)[toward] for g in group[1:]]
        gains = outcomes.gains[cell]  # [1 + draws, prompts]
        gain, draw_gains = float(gains[0].mean()), [float(g.mean()) for g in gains[1:]]
        paired = summarise(list(gains[0] - gains[1:].mean(axis=0)))
        kl, scales = outcomes.kl[cell], outcomes.scales[cell]
        at_kl = [float(g) for g in outcomes.mean_gains_at_kl[cell][1:]]
        measured = bool(np.isfinite(kl).all())
        # Every draw brought to the top set's KL, or no comparison at equal KL at all.
        matched_at_kl = measured and bool(np.isfinite(scales).all())
        rows.append(
            SpecificityRow(
                **common,
                size=size,
                n_neurons=int(targeted[s].sum()),
                budget=budget,
                n_prompts=len(held_out),
                targeted=rates(group[0]),
                targeted_ci=list(wilson(hits, len(held_out))),
                matched=Spread(**summarise(draws, SHARE)),
                matched_per_draw=draws,
                p_value=rank_p_value(hits / len(held_out), draws),
                p_value_holm=1.0,  # set over all the stage's rows, by `with_holm`
                matched_prediction=prediction_interval(draws, SHARE),
                margin_gain=gain,
                matched_margin_gain=draw_gains,
                p_value_margin=rank_p_value(gain, draw_gains),
                paired_margin=[paired["mean"], paired["ci_low"], paired["ci_high"]],
                kl=float(kl[0]) if measured else None,
                matched_kl=[float(k) for k in kl[1:]] if measured else None,
                matched_scale_at_kl=[float(c) for c in scales[1:]] if matched_at_kl else None,
                matched_margin_gain_at_kl=at_kl if matched_at_kl else None,
                p_value_margin_at_kl=rank_p_value(gain, at_kl) if matched_at_kl else None,
            )
        )
    return rows
