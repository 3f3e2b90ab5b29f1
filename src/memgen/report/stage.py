"""Stage `report`: `results.json`, the figures as PNG, and a self-contained `report.html`.

memgen report --run-dir runs/color-seed0
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from memgen.core.artifacts import Stage, write_json
from memgen.core.config import RunConfig
from memgen.pipeline import open_step
from memgen.report.html import render
from memgen.report.results import collect

log = logging.getLogger(__name__)
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
    step = open_step(run_dir, "report", cfg, force)
    if step is None:
        return Stage(run_dir, "report")
    cfg, stage = step.cfg, step.stage
    out = stage.begin()
    read = list(step.inputs)  # bound and ablate only when current (memgen.pipeline)
    results = collect(run_dir, cfg, read)
    write_json(out / "results.json", results)
    write_json(run_dir / "results.json", results)
    figures = {}
    for name, relative in FIGURES.items():
        source = run_dir / relative
        if source.is_file() and Path(relative).parts[0] in read:
            figures[name] = shutil.copyfile(source, out / f"{name}.png")
    (out / "report.html").write_text(render(results, figures))
    step.finish({"figures": sorted(figures)})
    log.info("report: %s", out / "report.html")
    return stage
