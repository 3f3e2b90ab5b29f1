"""How far could any shared shift steer? An upper bound for NMD-style steering.

NMD steering adds one fixed vector (alpha x NMD on the selected neurons, zero
elsewhere) at the last position of every forward pass. When it moves few prompts,
is that the neuron selection's fault, or can no shared vector do it? `run_bound`
answers the second question: it trains, by gradient descent with the model frozen, the
one vector per layer of a site that best makes the prompts' answer the other
behaviour's up to where the two part (`memgen.steering.shifts.fit_shifts`, every layer
in one batch), on
half of the prompts, and generates on the other half with it, so the figure it reports
is held out. Each direction is kept in `bound/pieces/` as it finishes, so a stopped stage
resumes at the first direction not done.

    memgen bound --run-dir runs/color-seed0
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.artifacts import Step, write_json
from memgen.core.config import RunConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import Example, read_test_answers
from memgen.core.hooks import Intervention
from memgen.core.modeling import load_run_model
from memgen.core.pieces import Pieces
from memgen.core.recorded import read_record
from memgen.core.rows import BoundRow, Direction, dump_rows
from memgen.core.sites import Site, n_layers, site_width
from memgen.core.stats import rates
from memgen.steering.bench import DIRECTIONS, Bench, tuning_and_held_out
from memgen.steering.methods import activation_scale
from memgen.steering.shifts import fit_shifts
from memgen.tasks.base import make_task

log = logging.getLogger(__name__)


def as_interventions(site: Site, shift: np.ndarray) -> list[Intervention]:
    """A fitted vector of `bound/shifts.safetensors` as one dense `add`, for `intervene`
    (the documented way to steer with it: docs/results-schema.md)."""
    return [Intervention(site, tuple(range(len(shift))), "add", tuple(float(v) for v in shift))]


@dataclass
class _LayerFits:
    """One dense shift per layer, all fitted in one batch: each may move its whole layer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    bench: Bench
    layers: list[int]
    mean_norm: np.ndarray  # the site's mean activation norm per layer: the shifts' scale
    cfg: RunConfig

    def direction(
        self, direction: Direction, prompts: list[Example]
    ) -> tuple[list[BoundRow], dict[str, np.ndarray]]:
        """Fit on one half of `prompts`, report on the other: a row and a vector per layer."""
        bc, toward = self.cfg.bound, DIRECTIONS[direction][1]
        depth, width = n_layers(self.model), site_width(self.model, bc.site)
        masks = np.zeros((len(self.layers), depth, width), dtype=bool)
        for k, layer in enumerate(self.layers):
            masks[k, layer] = True
        fit_rows, held_rows = tuning_and_held_out(len(prompts), self.cfg.seed)
        fitting, held_out = [prompts[i] for i in fit_rows], [prompts[i] for i in held_rows]
        answers = [ex.answer(toward) for ex in fitting]
        fitted, fit = fit_shifts(
            self.model,
            self.tokenizer,
            [ex.prompt for ex in fitting],
            answers,
            masks,
            np.ones((depth, width)),
            bc.site,
            steps=bc.steps,
            lr=bc.lr,
            seed=self.cfg.seed,
            chat=self.cfg.train.chat,
            others=[ex.other_answer(toward) for ex in fitting],
        )
        labels = self.bench.labels(held_out, fitted, "last")
        rows, shifts = [], {}
        for k, layer in enumerate(self.layers):
            site, shift = Site(bc.site, layer), fitted[k, layer]
            shifts[f"{direction}/{site}"] = shift.astype(np.float32)
            norm, scale = float(np.linalg.norm(shift)), float(self.mean_norm[layer])
            rows.append(
                BoundRow(
                    direction=direction,
                    site=site.kind,
                    layer=layer,
                    n_fit=len(fitting),
                    fit=float(fit[k]),
                    n_held_out=len(held_out),
                    held_out=rates(labels[k]),
                    shift_norm=norm,
                    relative_norm=norm / scale if scale > 0 else float("inf"),
                )
            )
        return rows, shifts


def _fitted_once(
    fits: _LayerFits, pieces: Pieces, direction: Direction, prompts: list[Example]
) -> tuple[list[BoundRow], dict[str, np.ndarray]]:
    """`fits.direction`, or what a stopped run of this stage kept of it."""

    def measure() -> list[BoundRow]:
        found, vectors = fits.direction(direction, prompts)
        pieces.arrays(f"{direction}-shifts", lambda: vectors)  # saved before the rows
        return found

    rows = pieces.get(direction, BoundRow, measure)
    return rows, pieces.arrays(f"{direction}-shifts", lambda: fits.direction(direction, prompts)[1])


def run_bound(step: Step) -> None:
    """Stage `bound`: per direction and layer, the fitted shared shift, fit and held out."""
    cfg, stage, bc = step.cfg, step.stage, step.cfg.bound
    model, tokenizer = load_run_model(step.inputs["train"].path, cfg.train, cfg.device)
    depth = n_layers(model)
    layers = list(range(depth)) if bc.layers is None else bc.layers
    if bad := [layer for layer in layers if not 0 <= layer < depth]:
        raise MemgenError(f"bound.layers {bad} out of range: the model has layers 0..{depth - 1}")
    _, mean_norm = activation_scale(read_record(step.inputs["record"].path).activations(bc.site))
    bench = Bench(model, tokenizer, make_task(cfg.task, cfg.data.options), cfg, bc.site)
    fits = _LayerFits(model, tokenizer, bench, layers, mean_norm, cfg)
    labelled = read_test_answers(step.inputs["behave"].path)
    out = stage.begin()
    pieces = Pieces(out / "pieces", step)
    rows: list[BoundRow] = []
    shifts: dict[str, np.ndarray] = {}  # "direction/site.layer" -> the fitted vector
    for direction, (source, _) in DIRECTIONS.items():
        prompts = [ex for ex, label in labelled if label == source][: bc.n_prompts]
        if len(prompts) < 2:
            log.warning(
                "bound: %d test prompts answered %r; %s skipped", len(prompts), source, direction
            )
            continue

        found, vectors = _fitted_once(fits, pieces, direction, prompts)
        rows += found
        shifts.update(vectors)
    write_json(out / "bound.json", {"rows": dump_rows(rows)})
    save_file(shifts, str(out / "shifts.safetensors"))
    pieces.clear()
    step.finish({"rows": dump_rows(rows)})
    log.info("%s", format_bound(rows))


def format_bound(rows: list[BoundRow]) -> str:
    """`bound.json`'s rows as a plain-text table."""
    lines = ["direction   site     fit   held out: gen   mem  other   shift/norm"]
    for row in rows:
        held = row.held_out
        lines.append(
            f"{row.direction:<11} {row.site}.{row.layer:<3} {row.fit:5.2f}"
            f"            {held['gen']:5.2f} {held['mem']:5.2f} {held['other']:5.2f}"
            f"   {row.relative_norm:9.2f}"
        )
    return "\n".join(lines)
