"""Stage `data`: write the task's training, dev and test sets as JSONL.

Dev prompts choose the checkpoint; test prompts, never shown to a choice, measure.

memgen data --run-dir runs/color task=color data.n_train=20000
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from memgen.core.artifacts import Stage
from memgen.core.config import RunConfig
from memgen.core.examples import write_jsonl
from memgen.tasks.base import make_task

log = logging.getLogger(__name__)


def stage_config(cfg: RunConfig) -> dict[str, object]:
    """The resolved task options are part of the identity: a changed default regenerates."""
    options = make_task(cfg.task, cfg.data.options).options.model_dump(mode="json")
    data = {**cfg.data.model_dump(mode="json"), "options": options}
    return {"task": cfg.task, "seed": cfg.seed, "data": data}


def run_data(run_dir: Path, cfg: RunConfig, force: bool = False) -> Stage:
    stage = Stage(run_dir, "data")
    config = stage_config(cfg)
    if stage.up_to_date(config, [], force):
        return stage
    task = make_task(cfg.task, cfg.data.options)
    out = stage.begin()
    train = task.train_set(cfg.data.n_train, cfg.seed)
    test = task.test_set(cfg.data.n_test, cfg.seed)
    dev = task.dev_set(cfg.data.n_dev, cfg.seed, test)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "dev.jsonl", dev)
    write_jsonl(out / "test.jsonl", test)
    kinds = Counter(str(ex.meta.get("kind", "plain")) for ex in train)
    summary = {
        "n_train": len(train),
        "n_dev": len(dev),
        "n_test": len(test),
        "train_kinds": dict(kinds),
    }
    stage.finish(config, [], cfg.seed, summary)
    log.info(
        "data: %d training, %d dev and %d test examples in %s", len(train), len(dev), len(test), out
    )
    return stage
