"""Stage `data`: write the task's training, dev and test sets as JSONL.

Dev prompts choose the checkpoint; test prompts, never shown to a choice, measure.

memgen data --run-dir runs/color task=color data.n_train=20000
"""

from __future__ import annotations

import logging
from collections import Counter

from memgen.core.artifacts import Step
from memgen.core.config import RunConfig
from memgen.core.examples import Example, Split, split_path, write_jsonl
from memgen.tasks.base import make_task

log = logging.getLogger(__name__)


def resolved_options(cfg: RunConfig) -> dict[str, object]:
    """The task options with their defaults filled in: a changed default regenerates."""
    options = make_task(cfg.task, cfg.data.options).options.model_dump(mode="json")
    return {"data": {**cfg.data.model_dump(mode="json"), "options": options}}


def run_data(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    task = make_task(cfg.task, cfg.data.options)
    out = stage.begin()
    train = task.train_set(cfg.data.n_train, cfg.seed)
    test = task.test_set(cfg.data.n_test, cfg.seed)
    dev = task.dev_set(cfg.data.n_dev, cfg.seed, test)
    splits: dict[Split, list[Example]] = {"train": train, "dev": dev, "test": test}
    for split, examples in splits.items():
        write_jsonl(split_path(out, split), examples)
    kinds = Counter(str(ex.meta.get("kind", "plain")) for ex in train)
    summary = {
        "n_train": len(train),
        "n_dev": len(dev),
        "n_test": len(test),
        "train_kinds": dict(kinds),
    }
    step.finish(summary)
    log.info(
        "data: %d training, %d dev and %d test examples in %s", len(train), len(dev), len(test), out
    )
