"""The rule-following check: does `gen` mean the rule, or copying a colour from the context?"""

import pytest

from memgen.behave.rule import rule_following
from memgen.tasks import make_task


def test_copying_scores_near_chance_and_following_the_rule_scores_one() -> None:
    task = make_task("color")
    examples = task.rule_check_set(400, seed=0)
    stated = [task.stated_answers(ex) for ex in examples]
    # Drawn the paper's way: the clue's colour is always stated, most prompts state more.
    pairs = zip(examples, stated, strict=True)
    assert all(ex.gen_answer in s and ex.mem_answer not in s for ex, s in pairs)
    assert sum(len(s) > 1 for s in stated) > len(examples) / 2
    follows = rule_following(task, examples, [ex.gen_answer for ex in examples])
    assert follows["share"] == 1.0 and follows["n"] == len(examples)
    assert follows["rates"]["gen"] == 1.0
    # Copying the last colour stated: right only when it happens to be the clue's.
    copies = rule_following(task, examples, [s[-1] for s in stated])
    assert copies["share"] == pytest.approx(copies["chance"], abs=0.1)
    assert copies["by_stated"]["1"]["share"] == 1.0  # one colour stated: copying is the rule
    # Recall answers never count: the memorized colour is not in the context.
    recalls = rule_following(task, examples, [ex.mem_answer for ex in examples])
    assert recalls["n"] == 0 and recalls["share"] is None and recalls["rates"]["mem"] == 1.0


def test_tasks_without_a_shortcut_have_no_check() -> None:
    assert make_task("cipher").rule_check_set(10, seed=0) == []
