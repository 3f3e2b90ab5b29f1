"""How far could any shared shift steer? An upper bound for NMD-style steering.

NMD steering adds one fixed vector (alpha x NMD on the selected neurons, zero
elsewhere) at the last position of every forward pass. When it moves few prompts,
is that the neuron selection's fault, or can no shared vector do it? `run_bound`
answers the second question: it trains, by gradient descent with the model frozen, the
one vector per layer of a site that best makes the prompts' first answer token the
other behaviour's (`memgen.steering.shifts.fit_shifts`, every layer in one batch), on
half of the prompts, and generates on the other half with it, so the figure it reports
is held out.

    memgen bound --run-dir runs/color-seed0
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from memgen.core.artifacts import Stage, write_json
from memgen.core.config import RunConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import read_test_answers
from memgen.core.hooks import Intervention
from memgen.core.modeling import load_run_model
from memgen.core.recorded import read_record
from memgen.core.rows import BoundRow, dump_rows
from memgen.core.sites import Site, n_layers, site_width
from memgen.core.stats import rates
from memgen.pipeline import open_step
from memgen.steering.bench import DIRECTIONS, Bench, tuning_and_held_out
from memgen.steering.methods import activation_scale
from memgen.steering.shifts import fit_shifts
from memgen.tasks.base import make_task

log = logging.getLogger(__name__)


def as_interventions(site: Site, shift: np.ndarray) -> list[Intervention]:
    """A fitted vector of `bound/shifts.safetensors` as one dense `add`, for `intervene`
    (the documented way to steer with it: docs/results-schema.md)."""
    return [Intervention(site, tuple(range(len(shift))), "add", tuple(float(v) for v in shift))]


def run_bound(run_dir: Path, cfg: RunConfig, force: bool = False) -> Stage:
    """Stage `bound`: per direction and layer, the fitted shared shift, fit and held out."""
    step = open_step(run_dir, "bound", cfg, force)
    if step is None:
        return Stage(run_dir, "bound")
    cfg, stage = step.cfg, step.stage
    train, behave, record = (step.inputs["train"], step.inputs["behave"], step.inputs["record"])
    bc = cfg.bound
    task = make_task(cfg.task, cfg.data.options)
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    depth = n_layers(model)
    layers = list(range(depth)) if bc.layers is None else bc.layers
    if bad := [layer for layer in layers if not 0 <= layer < depth]:
        raise MemgenError(f"bound.layers {bad} out of range: the model has layers 0..{depth - 1}")
    # The site's mean activation norm per layer puts each fitted shift's size in scale.
    _, mean_norm = activation_scale(read_record(record.path).activations(bc.site))
    bench = Bench(model, tokenizer, task, cfg, bc.site)
    labelled = read_test_answers(behave.path)
    width = site_width(model, bc.site)
    # One dense shift per layer, all fitted in one batch: each may move its whole layer.
    masks = np.zeros((len(layers), depth, width), dtype=bool)
    for k, layer in enumerate(layers):
        masks[k, layer] = True
    out = stage.begin()
    rows: list[BoundRow] = []
    shifts: dict[str, np.ndarray] = {}  # "direction/site.layer" -> the fitted vector
    for direction, (source, toward) in DIRECTIONS.items():
        prompts = [ex for ex, label in labelled if label == source][: bc.n_prompts]
        if len(prompts) < 2:
            log.warning(
                "bound: %d test prompts answered %r; %s skipped", len(prompts), source, direction
            )
            continue
        fit_rows, held_rows = tuning_and_held_out(len(prompts), cfg.seed)
        fitting, held_out = [prompts[i] for i in fit_rows], [prompts[i] for i in held_rows]
        answers = [ex.gen_answer if toward == "gen" else ex.mem_answer for ex in fitting]
        fitted, fit = fit_shifts(
            model, tokenizer, [ex.prompt for ex in fitting], answers, masks,
            np.ones((depth, width)), bc.site, steps=bc.steps, lr=bc.lr, seed=cfg.seed,
            chat=cfg.train.chat,
        )  # fmt: skip
        labels = bench.labels(held_out, fitted, "last")
        for k, layer in enumerate(layers):
            site = Site(bc.site, layer)
            shift = fitted[k, layer]
            shifts[f"{direction}/{site}"] = shift.astype(np.float32)
            norm, scale = float(np.linalg.norm(shift)), float(mean_norm[layer])
            rows.append(BoundRow(
                direction=direction, site=site.kind, layer=layer, n_fit=len(fitting),
                fit=float(fit[k]), n_held_out=len(held_out), held_out=rates(labels[k]),
                shift_norm=norm, relative_norm=norm / scale if scale > 0 else float("inf"),
            ))  # fmt: skip
    write_json(out / "bound.json", {"rows": dump_rows(rows)})
    save_file(shifts, str(out / "shifts.safetensors"))
    step.finish({"rows": dump_rows(rows)})
    log.info("%s", format_bound(rows))
    return stage


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
