"""Stage `report`: `results.json`, the figures as PNG, and a self-contained `report.html`.

memgen report --run-dir runs/color-seed0
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from memgen.core.artifacts import Stage, write_json
from memgen.core.config import RunConfig
from memgen.report.html import render
from memgen.report.results import collect

log = logging.getLogger(__name__)
INPUTS = ("train", "behave", "neurons", "probe", "steer", "specificity")
# Stages `memgen run` leaves out; the report shows them when they are current.
OPTIONAL_INPUTS = ("bound", "ablate")
# Report figure name -> where its stage writes it.
FIGURES = {
    "curve": "train/curve.png",
    "nmd": "neurons/nmd_sorted.png",
    "share": "neurons/layer_share.png",
    "probe": "probe/accuracy.png",
    "learning_curve": "probe/learning_curve.png",
    "steering": "steer/steering.png",
    "specificity": "specificity/specificity.png",
    "ablation": "ablate/ablate.png",
}


def run_report(run_dir: Path, cfg: RunConfig, force: bool = False) -> Stage:
    stage = Stage(run_dir, "report")
    inputs = [Stage(run_dir, name) for name in INPUTS]
    for name in OPTIONAL_INPUTS:
        optional = Stage(run_dir, name)
        if optional.is_current():
            inputs.append(optional)
        elif optional.is_finished():
            log.warning("report: %s predates the stages it read; re-run `memgen %s`", name, name)
    config = {"task": cfg.task, "seed": cfg.seed}
    if stage.up_to_date(config, inputs, force):
        return stage
    out = stage.begin()
    read = [stage.name for stage in inputs]
    results = collect(run_dir, cfg, read)
    write_json(out / "results.json", results)
    write_json(run_dir / "results.json", results)
    figures = {}
    for name, relative in FIGURES.items():
        source = run_dir / relative
        if source.is_file() and Path(relative).parts[0] in read:
            figures[name] = shutil.copyfile(source, out / f"{name}.png")
    (out / "report.html").write_text(render(results, figures))
    stage.finish(config, inputs, cfg.seed, {"figures": sorted(figures)})
    log.info("report: %s", out / "report.html")
    return stage
