"""Cross-run steering: one run's best steering applied to another run's held-out prompts.

    memgen compare runs/lora-color runs/lora-math runs/lora-cipher --shared-units

Where units correspond (one network's tasks, or adapters on one base), a steering chosen
on task A can be added to the model of task B. If the tasks share behaviour neurons (the
paper's inter-task claim), A's mem -> gen steering should move B's memorized answers to
B's rule too. Each cell runs A's saved `steer/best/<direction>` on B's own held-out
prompts of that direction (those `memgen steer` reported B's rates on), at A's position,
beside a control that can fail: random directions with the same norm in each layer
(`steer.draws` of them, B's config), as the dense methods' matched control is built.
The diagonal (A = B) is each run's own held-out rate, a check on the table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from memgen.core.artifacts import Stage, read_json
from memgen.core.examples import read_test_answers
from memgen.core.modeling import load_run_model
from memgen.core.sites import SiteKind
from memgen.core.stats import SHARE, intervals, rates, summarise
from memgen.pipeline import made_with
from memgen.steering.bench import DIRECTIONS, Bench
from memgen.steering.methods import random_like
from memgen.steering.saved import load_steering
from memgen.tasks.base import make_task

log = logging.getLogger(__name__)


def cross_steering(runs: Sequence[tuple[str, Path]], seed: int = 0) -> list[dict[str, Any]]:
    """One row per (source run, target run, direction) where both have that direction."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for target_name, target in runs:
        cfg = made_with(target, "steer")
        steered = read_json(Stage(target, "steer").path / "steering.json")["splits"]
        labelled = read_test_answers(Stage(target, "behave").path)
        model, tokenizer = load_run_model(Stage(target, "train").path, cfg.train, cfg.device)
        task = make_task(cfg.task, cfg.data.options)
        for direction, (_, toward) in DIRECTIONS.items():
            if direction not in steered:
                continue
            held_out = [labelled[i][0] for i in steered[direction]["held_out"]]
            for source_name, source in runs:
                path = Stage(source, "steer").path / "best" / direction
                if not path.with_suffix(".json").is_file():
                    continue
                steering = load_steering(path)
                steering.check_compatible(model)
                bench = Bench(model, tokenizer, task, cfg, cast(SiteKind, steering.site))
                controls = random_like(steering.shift, cfg.steer.draws, rng)
                shifts = np.stack([steering.shift, *controls])
                labels = bench.labels(held_out, shifts, steering.position)
                draws = [rates(lab)[toward] for lab in labels[1:]]
                rows.append(
                    {
                        "from": source_name,
                        "to": target_name,
                        "direction": direction,
                        "task_from": str(steering.meta.get("task")),
                        "task_to": cfg.task,
                        "method": steering.meta.get("method"),
                        "position": steering.position,
                        "n_prompts": len(held_out),
                        "targeted": rates(labels[0]),
                        "ci": intervals(labels[0]),
                        "control": {
                            "rates": rates([x for lab in labels[1:] for x in lab]),
                            "target_per_draw": draws,
                            "target": summarise(draws, SHARE),
                        },
                    }
                )
                log.info(
                    "cross-steering %s: %s -> %s, %s %.1f%% (random %.1f%%)",
                    direction,
                    source_name,
                    target_name,
                    toward,
                    100 * rows[-1]["targeted"][toward],
                    100 * float(np.mean(draws)),
                )
    return rows
