"""Does `gen` mean the rule? A check on prompts where a shortcut could also answer.

    from memgen.behave.rule import rule_following

On color, a model can answer "by rule" by copying *a* colour from the context. Among the
answers that repeat one of the answers a prompt states (`Task.stated_answers`), the
share that is the rule's tells the two apart: near 1 for a model that follows the rule,
near 1 / (colours stated) for one that copies. Reported with its Wilson interval and n,
overall and by the number of answers stated, beside the chance level.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from memgen.core.examples import Example
from memgen.core.stats import rates, wilson
from memgen.tasks.base import Task


def first_word(output: str) -> str:
    words = output.split()
    return words[0].strip(".?,!").lower() if words else ""


def _share(hits: int, n: int) -> dict[str, Any]:
    low, high = wilson(hits, n)
    return {"share": hits / n if n else None, "ci": [low, high], "n": n}


def rule_following(task: Task, examples: Sequence[Example], outputs: Sequence[str]) -> dict:
    """{share, ci, n, chance, by_stated: {k: {share, ci, n, chance}}, rates, n_prompts}."""
    by_stated: dict[str, list[bool]] = defaultdict(list)
    chance: list[float] = []
    for example, output in zip(examples, outputs, strict=True):
        stated = task.stated_answers(example)
        answer = first_word(output)
        if answer and answer in stated:
            key = str(len(stated)) if len(stated) < 4 else "4+"
            by_stated[key].append(answer == example.gen_answer.lower())
            chance.append(1 / len(stated))
    hits = [hit for group in by_stated.values() for hit in group]
    return {
        **_share(sum(hits), len(hits)),
        "chance": sum(chance) / len(chance) if chance else None,
        "by_stated": {
            key: {**_share(sum(group), len(group)), "chance": 1 / int(key.rstrip("+"))}
            for key, group in sorted(by_stated.items())
        },
        "rates": rates(task.label(ex, out) for ex, out in zip(examples, outputs, strict=True)),
        "n_prompts": len(examples),
    }
