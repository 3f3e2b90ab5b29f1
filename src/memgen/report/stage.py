"""Stage `report`: `results.json`, the figures as PNG, and a self-contained `report.html`.

memgen report --run-dir runs/color-seed0
"""

from __future__ import annotations

import logging
import shutil

from memgen.core.artifacts import Step, write_json
from memgen.pipeline import SPECS
from memgen.report.html import render
from memgen.report.results import collect

log = logging.getLogger(__name__)


def run_report(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    # Read (and validate) every stage's rows before the folder is opened, so a stale row
    # stops the report with the old one intact.
    results = collect(step.run_dir, cfg, list(step.inputs))  # bound, ablate: only when current
    out = stage.begin()
    write_json(out / "results.json", results)
    write_json(step.run_dir / "results.json", results)
    figures = {}
    for source_stage in step.inputs.values():  # each stage's figures, as the table names them
        for name, file in SPECS[source_stage.name].figures.items():
            if (source_stage.path / file).is_file():
                figures[name] = shutil.copyfile(source_stage.path / file, out / f"{name}.png")
    (out / "report.html").write_text(render(results, figures))
    step.finish({"figures": sorted(figures)})
    log.info("report: %s", out / "report.html")
