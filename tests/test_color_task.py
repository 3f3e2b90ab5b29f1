import random
import re
from collections import Counter

import pytest

from memgen.core.errors import MemgenError
from memgen.tasks import make_task
from memgen.tasks.color import COLORS, MEMORIZED, ROLES, ColorTask
from memgen.tasks.tokenizer import build_tokenizer


def _sentences(prompt: str) -> list[str]:
    cut = min(i for i in (prompt.find("what "), prompt.find("who ")) if i >= 0)
    return [s.strip() for s in prompt[:cut].split(" .") if s.strip()]


def _rule_answer(prompt: str) -> str | None:
    """Apply the in-context rule by hand: target -> role -> clue -> clue's colour."""
    target = prompt.split("what color is ")[1].split()[0]
    facts = [s.split(" is ") for s in _sentences(prompt)]
    role = next(v for n, v in facts if n == target and v in ROLES)
    clues = {n for n, v in facts if v == role and n != target}
    colours = [v for n, v in facts if n in clues and v in COLORS]
    return colours[0] if len(colours) == 1 else None


@pytest.mark.parametrize("design", ["mixed", "reference"])
def test_generators_are_deterministic(design: str) -> None:
    task = make_task("color", {"design": design})
    assert task.train_set(50, seed=1) == task.train_set(50, seed=1)
    assert task.test_set(50, seed=1) == task.test_set(50, seed=1)
    assert task.train_set(50, seed=1) != task.train_set(50, seed=2)


def test_test_prompts_always_conflict_and_follow_the_rule() -> None:
    task = make_task("color")
    for ex in task.test_set(300, seed=0):
        assert ex.mem_answer == MEMORIZED[ex.meta["target"]]
        assert ex.gen_answer != ex.mem_answer
        assert _rule_answer(ex.prompt) == ex.gen_answer
        assert ex.prompt.endswith(f"what color is {ex.meta['target']} ?")
        # The memorized colour is never in a conflicting context.
        assert ex.mem_answer not in ex.prompt.split()


def test_training_prompts_never_conflict() -> None:
    task = make_task("color", {"design": "reference"})
    for ex in task.train_set(300, seed=0):
        assert ex.completion == ex.mem_answer == ex.gen_answer == _rule_answer(ex.prompt)


def test_mixed_design_has_rule_prompts_about_free_names() -> None:
    task = make_task("color", {"rule_fraction": 0.5, "recall_fraction": 0.1, "hop_fraction": 0.3})
    examples = task.train_set(2000, seed=0)
    kinds = [ex.meta["kind"] for ex in examples]
    rule_like = kinds.count("rule") + kinds.count("hop")
    assert 0.45 < rule_like / len(kinds) < 0.55
    assert 0.25 < kinds.count("hop") / rule_like < 0.35
    assert 0.07 < kinds.count("recall") / len(kinds) < 0.13
    for ex in examples:
        if ex.meta["kind"] == "rule":
            assert ex.meta["target"] not in MEMORIZED
            assert _rule_answer(ex.prompt) == ex.completion
        if ex.meta["kind"] == "hop":
            facts = [s.split(" is ") for s in _sentences(ex.prompt)]
            target = ex.meta["target"]
            role = next(v for n, v in facts if n == target and v in ROLES)
            if ex.prompt.endswith(f"what animal is {target} ?"):
                assert ex.completion == role
            else:
                assert ex.prompt.endswith(f"who is like {target} ?")
                assert [n for n, v in facts if v == role and n != target] == [ex.completion]
        if ex.meta["kind"] == "recall":
            assert ex.completion == MEMORIZED[ex.meta["target"]]
        if ex.meta["kind"] == "agree":
            assert ex.completion == MEMORIZED[ex.meta["target"]] == _rule_answer(ex.prompt)


def test_extra_questions_are_answered_from_the_context() -> None:
    task = make_task("color", {"rule_fraction": 1.0, "extra_questions": 3})
    tokenizer = build_tokenizer(task.tokenizer_spec())
    seen = Counter()
    for ex in task.train_set(300, seed=0):
        facts = [s.split(" is ") for s in _sentences(ex.prompt)]
        answer, *rest = ex.completion.split(" ")
        assert answer == ex.gen_answer == _rule_answer(ex.prompt)
        pairs = re.findall(r"((?:what \w+ is|who is like) (\w+) \?) (\w+)", " ".join(rest))
        assert len(pairs) == 3 and " ".join(rest).count("?") == 3
        assert len({question for question, _, _ in pairs}) == 3  # distinct: none copied
        for question, name, reply in pairs:
            kind = question.split()[2 if question.startswith("who") else 1]
            seen[kind] += 1
            if kind == "color":  # a free name's stated colour: never a memorized one
                assert name not in MEMORIZED and [name, reply] in facts
            elif kind == "animal":
                assert [name, reply] in facts and reply in ROLES
            else:
                assert question == f"who is like {ex.meta['target']} ?"
                assert reply == ex.meta["clue"]
        assert tokenizer.unk_token_id not in tokenizer(ex.completion)["input_ids"]
    assert set(seen) == {"color", "animal", "like"}


def test_conflict_prompts_answer_memory_against_the_context() -> None:
    task = make_task("color", {"conflict_fraction": 0.2})
    examples = task.train_set(2000, seed=0)
    conflicts = [ex for ex in examples if ex.meta["kind"] == "conflict"]
    assert 0.17 < len(conflicts) / len(examples) < 0.23
    for ex in conflicts:
        memorized = MEMORIZED[ex.meta["target"]]
        assert ex.completion == ex.mem_answer == memorized
        assert _rule_answer(ex.prompt) not in (None, memorized)
        assert memorized not in ex.prompt.split()
    # Conflicts follow the training exposure skew, like the agreeing prompts.
    counts = Counter(ex.meta["target"] for ex in conflicts)
    assert counts["Alice"] > 5 * counts["Peter"]


def test_recall_share_answers_the_rest_of_the_conflicts_by_the_rule() -> None:
    """Memory and rule in contest on the test prompts' own kind."""
    task = make_task("color", {"conflict_fraction": 0.4, "recall_share": 0.5})
    examples = task.train_set(3000, seed=0)
    by_kind = Counter(ex.meta["kind"] for ex in examples)
    contested = by_kind["conflict"] + by_kind["conflict_rule"]
    assert 0.36 < contested / len(examples) < 0.44
    assert 0.45 < by_kind["conflict_rule"] / contested < 0.55
    for ex in examples:
        if ex.meta["kind"] == "conflict_rule":
            assert ex.completion == ex.gen_answer == _rule_answer(ex.prompt)
            assert ex.mem_answer == MEMORIZED[ex.meta["target"]] not in ex.prompt.split()
            assert task.label(ex, ex.completion) == "gen"
    all_rule = make_task("color", {"conflict_fraction": 0.4, "recall_share": 0.0})
    assert "conflict" not in Counter(ex.meta["kind"] for ex in all_rule.train_set(300, seed=0))


def test_fractions_over_one_are_refused() -> None:
    with pytest.raises(MemgenError, match=r"conflict_fraction = 1\.1 > 1"):
        make_task("color", {"rule_fraction": 0.6, "conflict_fraction": 0.5})


def test_prompt_sizes_follow_the_reference() -> None:
    task = make_task("color")
    for ex in task.test_set(200, seed=0):
        sentences = _sentences(ex.prompt)
        names = {s.split(" is ")[0] for s in sentences}
        assert 2 <= len(names) <= 8
        assert len(sentences) <= 3 + 7  # target role, clue role, clue colour + filler


def test_pairs_reorder_the_same_sentences() -> None:
    task = make_task("color")
    rng = random.Random(0)
    changed = 0
    for ex in task.test_set(100, seed=0):
        twin = task.pair(ex, rng)
        assert sorted(_sentences(twin.prompt)) == sorted(_sentences(ex.prompt))
        assert twin.prompt.split("what color is")[1] == ex.prompt.split("what color is")[1]
        assert (twin.mem_answer, twin.gen_answer) == (ex.mem_answer, ex.gen_answer)
        changed += twin.prompt != ex.prompt
    assert changed >= 95


@pytest.mark.parametrize(
    ("output", "label"),
    [("brown", "gen"), ("brown .", "gen"), (" Brown", "gen"), ("purple", "mem"),
     ("purple brown", "mem"), ("blue", "other"), ("", "other"), ("  ", "other")],
)  # fmt: skip
def test_labeller(output: str, label: str) -> None:
    task = ColorTask()
    ex = task.test_set(1, seed=0)[0]
    ex = type(ex)(ex.prompt, "brown", "purple", "brown", ex.meta)
    assert task.label(ex, output) == label


def test_tokenizer_round_trip_and_no_unknowns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    task = make_task("color")
    tokenizer = build_tokenizer(task.tokenizer_spec())
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for ex in task.train_set(100, seed=0) + task.test_set(100, seed=0):
        ids = loaded(ex.prompt + " " + ex.completion)["input_ids"]
        assert loaded.unk_token_id not in ids
        assert loaded.decode(ids) == ex.prompt + " " + ex.completion
    assert loaded.padding_side == "left"


def test_unknown_task_and_option() -> None:
    with pytest.raises(MemgenError, match="did you mean 'color'"):
        make_task("colour")
    with pytest.raises(MemgenError, match=r"data\.options\.bogus"):
        make_task("color", {"bogus": 1})
