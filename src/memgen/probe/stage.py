"""Stage `probe`: how well does each layer's activation predict mem vs gen?

    memgen probe --run-dir runs/color                           # logreg, 5 folds by pair
    memgen probe --run-dir runs/color probe.classifier=lda probe.folds=10

Reads `record/` (every recorded site) and writes into `probe/`:
- `per_layer.json`: [{layer, site, accuracy, ci_low, ci_high, n}] cross-validated by pair;
- `learning_curve.json`: accuracy at the best layer against the number of training pairs;
- `baseline.json`: majority-class and shuffled-label accuracy;
- `readout.json`: per layer, the behaviour read from the logit-lens answer margin
  (`memgen.record.readout`), alone and within pairs; empty when not recorded;
- `accuracy.png`, `learning_curve.png`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from memgen.core.artifacts import Step, write_json
from memgen.core.config import RunConfig
from memgen.core.recorded import Recorded, read_record
from memgen.core.rows import ProbeLayer, dump_rows
from memgen.probe.figures import plot_layer_accuracy, plot_learning_curve
from memgen.probe.probes import (
    PROBES,
    fold_assignment,
    layer_accuracies,
    learning_curve,
    majority_baseline,
    readout_accuracies,
    shuffled_baseline,
)

log = logging.getLogger(__name__)


def _per_layer(recorded: Recorded, cfg: RunConfig) -> list[ProbeLayer]:
    """The probe's held-out accuracy at every recorded site and layer."""
    pc, rows = cfg.probe, []
    for site in recorded.sites:
        x = recorded.activations(site)
        for row in layer_accuracies(
            x, recorded.labels, recorded.pair_ids, pc.classifier, pc.folds, cfg.seed
        ):
            rows.append(ProbeLayer(site=site, **row))
            log.info("probe: %s layer %d accuracy %.3f", site, row["layer"], row["accuracy"])
    return rows


def _baselines(
    best_x: np.ndarray, recorded: Recorded, best: ProbeLayer, cfg: RunConfig
) -> dict[str, Any]:
    """What a probe scores with no signal: the majority label, and shuffled labels."""
    pc, y, pair_ids = cfg.probe, recorded.labels, recorded.pair_ids
    shuffled = shuffled_baseline(best_x, y, pair_ids, pc.classifier, pc.folds, cfg.seed)
    return {
        "majority": majority_baseline(y, pair_ids, pc.folds, cfg.seed),
        "shuffled_labels": {"site": best.site, "layer": best.layer, **shuffled},
    }


def _summary(
    per_layer: list[ProbeLayer],
    best: ProbeLayer,
    baseline: dict[str, Any],
    readout: list[dict[str, Any]],
    n_pairs: int,
) -> dict[str, Any]:
    return {
        "per_layer": dump_rows(per_layer),
        "best": best.model_dump(mode="json"),
        "baseline": {name: b["accuracy"] for name, b in baseline.items()},
        "n_pairs": n_pairs,
        "readout": [
            {k: r[k] for k in ("layer", "accuracy", "ci_low", "ci_high", "paired_accuracy")}
            for r in readout
        ],
    }


def run_probe(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    record = step.inputs["record"]
    pc = cfg.probe
    PROBES.get(pc.classifier)  # fail on a misspelt classifier before any work
    recorded = read_record(record.path)
    y, pair_ids = recorded.labels, recorded.pair_ids
    fold_assignment(pair_ids, pc.folds, cfg.seed)  # too few pairs: fail before writing
    out = stage.begin()

    per_layer = _per_layer(recorded, cfg)
    write_json(out / "per_layer.json", dump_rows(per_layer))
    margins = recorded.answer_margins()
    readout = [] if margins is None else readout_accuracies(margins, y, pair_ids)
    write_json(out / "readout.json", readout)

    # First maximum wins, so ties go to the earlier site and layer.
    best = max(per_layer, key=lambda r: r.accuracy)
    best_x = np.asarray(recorded.activations(best.site)[:, best.layer, :], dtype=np.float32)
    curve = learning_curve(best_x, y, pair_ids, pc.classifier, pc.learning_curve, seed=cfg.seed)
    curve.update({"site": best.site, "layer": best.layer})
    write_json(out / "learning_curve.json", curve)
    baseline = _baselines(best_x, recorded, best, cfg)
    write_json(out / "baseline.json", baseline)

    what = f"{cfg.task}: {pc.classifier} probe"
    plot_layer_accuracy(
        dump_rows(per_layer), out / "accuracy.png", f"{what}, {pc.folds} folds by pair", readout
    )
    plot_learning_curve(
        curve["points"],
        out / "learning_curve.png",
        f"{what} at {best.site} layer {best.layer}",
    )

    summary = _summary(per_layer, best, baseline, readout, recorded.n_pairs)
    step.finish(summary)
    log.info("probe: best %s layer %d, accuracy %.3f", best.site, best.layer, best.accuracy)
