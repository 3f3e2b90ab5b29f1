"""Stage `behave`: label the trained model's test answers and mine flipped pairs.

    memgen behave --run-dir runs/color behave.num_beams=5

Writes `test_outputs.jsonl` (every test prompt with output and label), `rates.json`
(gen / mem / other with 95% Wilson intervals) and `pairs.jsonl` (two rows per
flipped pair, sharing a `pair_id`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from memgen.behave.pairs import PairSearch, mine_pairs, require_flips
from memgen.behave.rule import rule_following
from memgen.core.artifacts import Step, write_json
from memgen.core.examples import PAIRS_FILE, TEST_ANSWERS_FILE, Example, Labelled, read_split
from memgen.core.modeling import load_run_model
from memgen.core.reading import label_examples
from memgen.core.stats import rates_with_ci, wilson
from memgen.tasks.base import Task, make_task

log = logging.getLogger(__name__)


def _write_test_answers(
    out: Path, labelled: list[Labelled], task: Task, test: list[Example]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """Each test answer with its label, the rates with their CIs, and a mixture's per task."""
    with (out / TEST_ANSWERS_FILE).open("w") as handle:
        for row in labelled:
            handle.write(json.dumps(row.to_row()) + "\n")
    test_rates = rates_with_ci(row.label for row in labelled)
    write_json(out / "rates.json", test_rates)
    parts = task.split_by_task(test)
    by_task = {  # a mixture's rates per component task
        name: rates_with_ci(labelled[i].label for i in positions) for name, _, positions in parts
    }
    log.info("behave: test rates %s", {k: round(v["rate"], 3) for k, v in test_rates.items()})
    return test_rates, by_task if len(parts) > 1 else {}


def _write_pairs(out: Path, search: PairSearch) -> None:
    with (out / PAIRS_FILE).open("w") as handle:
        for pair_id, pair in enumerate(search.flipped):
            for member in pair:
                handle.write(json.dumps({"pair_id": pair_id, **member.to_row()}) + "\n")


def _pairs_summary(search: PairSearch, task: Task, mixture: bool) -> dict[str, Any]:
    low, high = wilson(len(search.flipped), search.evaluated)
    flipped_parts = task.split_by_task([pair[0].example for pair in search.flipped])
    return {
        "evaluated": search.evaluated,
        "flipped": len(search.flipped),
        "flip_rate": search.flip_rate,
        "flip_rate_ci": [low, high],
        # A mixture's neurons are scored on all its pairs: how many each task gave.
        "by_task": {name: len(rows) for name, _, rows in flipped_parts} if mixture else {},
    }


def run_behave(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    data, train = (step.inputs["data"], step.inputs["train"])
    task = make_task(cfg.task, cfg.data.options)
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    chat = cfg.train.chat
    out = stage.begin()

    test = read_split(data.path, "test")
    labelled = label_examples(model, tokenizer, task, test, cfg.behave, chat=chat, progress=True)
    test_rates, by_task = _write_test_answers(out, labelled, task, test)
    rule = None
    checks = task.rule_check_set(cfg.behave.n_rule_check, cfg.seed)
    if checks:  # tasks where a shortcut could pass for the rule (color)
        answers = label_examples(model, tokenizer, task, checks, cfg.behave, chat=chat)
        rule = rule_following(task, checks, [row.output for row in answers])
        log.info(
            "behave: rule following %.3f of %d context answers (chance %.3f)",
            rule["share"] or 0.0,
            rule["n"],
            rule["chance"] or 0.0,
        )

    search = mine_pairs(
        model, tokenizer, task, task.pairs(cfg.seed), cfg.behave, chat=chat, progress=True
    )
    _write_pairs(out, search)
    require_flips(search, cfg.behave)  # after writing: the pairs found are kept either way
    summary = {
        "test_rates": {k: v["rate"] for k, v in test_rates.items()},
        "test_rates_ci": test_rates,
        "test_rates_by_task": by_task,
        "rule_following": rule,
        "pairs": _pairs_summary(search, task, mixture=len(by_task) > 1),
    }
    step.finish(summary)
    log.info(
        "behave: %d flipped pairs of %d (%.1f%%)",
        len(search.flipped),
        search.evaluated,
        100 * search.flip_rate,
    )
