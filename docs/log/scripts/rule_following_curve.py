"""Rule following of each saved training checkpoint of a LoRA run (color), as run.

    python docs/log/scripts/rule_following_curve.py RUN CHECKPOINTS [N]

CHECKPOINTS holds `step-S/trainable.safetensors` copies of the run's `last` checkpoint
(copied aside while it trained). For each, the run's base with its LoRA gets those
weights, answers N prompts of `task.rule_check_set` (the paper's distractor rate, the
seed's own set, as `behave` draws it) and prints the rule-following share with its
Wilson interval, and gen / mem / other on the same prompts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from memgen.behave.rule import rule_following
from memgen.core.config import load_config
from memgen.core.reading import label_examples
from memgen.tasks.base import make_task
from memgen.train.stage import build_model


def main(run: Path, checkpoints: Path, n: int) -> None:
    cfg = load_config(run / "config.yaml")
    task = make_task(cfg.task, cfg.data.options)
    checks = task.rule_check_set(n, cfg.seed)
    model, tokenizer = build_model(cfg, task, checks, torch.device("cpu"))
    model.eval()
    steps = sorted(checkpoints.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    print("step  rule following [95% CI] (n, chance)   gen / mem / other %")
    for folder in steps:
        model.load_state_dict(load_file(str(folder / "trainable.safetensors")), strict=False)
        answers = label_examples(model, tokenizer, task, checks, cfg.behave, chat=cfg.train.chat)
        rule = rule_following(task, checks, [row.output for row in answers])
        low, high = rule["ci"]
        rates = rule["rates"]
        print(
            f"{folder.name.split('-')[1]:>4}  {rule['share'] or 0:.3f} [{low:.3f}, {high:.3f}] "
            f"({rule['n']}, {rule['chance'] or 0:.3f})   "
            f"{100 * rates['gen']:.1f} / {100 * rates['mem']:.1f} / {100 * rates['other']:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 200)
