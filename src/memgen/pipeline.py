"""The whole method, stage by stage, into one run folder.

    memgen run                         # color task, GPT-2 from scratch, CPU, minutes
    memgen run task=math --run-dir runs/math

Each stage is skipped when its manifest already matches its config and inputs, so
re-running after a crash or a config change redoes only what changed.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from memgen.core.artifacts import Stage
from memgen.core.config import RunConfig

log = logging.getLogger(__name__)

# Stage name -> "module:function"; imported lazily so `memgen --help` stays fast.
STAGES: dict[str, str] = {
    "data": "memgen.tasks.stage:run_data",
    "train": "memgen.train.stage:run_train",
    "behave": "memgen.behave.stage:run_behave",
    "record": "memgen.record.stage:run_record",
    "neurons": "memgen.neurons.stage:run_neurons",
    "probe": "memgen.probe.stage:run_probe",
    "steer": "memgen.steering.stage:run_steer",
    "specificity": "memgen.steering.specificity:run_specificity",
    "report": "memgen.report.stage:run_report",
}
# Stages `memgen run` leaves out: each is its own command, run on a finished run.
EXTRA_STAGES: dict[str, str] = {
    "bound": "memgen.steering.bound:run_bound",
    "ablate": "memgen.steering.ablate:run_ablate",
}

StageRunner = Callable[..., Stage]


def stage_runner(name: str) -> StageRunner:
    module, function = {**STAGES, **EXTRA_STAGES}[name].split(":")
    runner: StageRunner = getattr(importlib.import_module(module), function)
    return runner


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.task}-seed{cfg.seed}"


def run_stage(name: str, run_dir: Path, cfg: RunConfig, force: bool = False) -> Stage:
    import memgen.tasks  # noqa: F401  (registers the tasks)

    started = time.perf_counter()
    stage = stage_runner(name)(run_dir, cfg, force=force)
    log.info("%s: %.1f s", name, time.perf_counter() - started)
    return stage


def run_all(run_dir: Path, cfg: RunConfig, force: bool = False, until: str | None = None) -> None:
    for name in STAGES:
        run_stage(name, run_dir, cfg, force=force)
        if name == until:
            break
