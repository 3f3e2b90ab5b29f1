"""The math task: generators, scratchpad arithmetic, pairs, labeller, tokenizer."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import replace

import pytest

from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.tasks import make_task
from memgen.tasks.math import (
    SCRATCH_CLOSE,
    SCRATCH_OPEN,
    TAGS,
    TRIGGERS,
    MathTask,
    parse_prompt,
    scratchpad,
)
from memgen.tasks.tokenizer import build_tokenizer

LINE = re.compile(r"(\d)\+(\d)\+(\d)\+(\d)\+c(\d)=(\d+) w(\d) c(\d)")


def check_scratchpad(addends: tuple[int, ...], text: str, width: int) -> None:
    """Every column line is consistent with the addends and its neighbours."""
    lines = text.split("\n")
    assert lines[0] == SCRATCH_OPEN and lines[-2] == SCRATCH_CLOSE
    columns = lines[1:-2]
    assert len(columns) == width
    carry, written = 0, []
    for col, line in enumerate(columns):
        match = LINE.fullmatch(line)
        assert match, line
        *digits, carry_in, total, digit, carry_out = (int(g) for g in match.groups())
        assert digits == [a // 10**col % 10 for a in addends]
        assert carry_in == carry
        assert total == sum(digits) + carry_in
        assert (digit, carry_out) == (total % 10, total // 10)
        carry = carry_out
        written.append(digit)
    from_columns = int(str(carry) + "".join(map(str, reversed(written))))
    assert lines[-1] == " ".join(str(from_columns))
    assert int(lines[-1].replace(" ", "")) == sum(addends)


def test_scratchpad_matches_python_sum() -> None:
    rng = random.Random(0)
    for _ in range(300):
        addends = tuple(rng.randint(1, 999) for _ in range(4))
        check_scratchpad(addends, scratchpad(addends, 3), 3)
    check_scratchpad((999, 999, 999, 999), scratchpad((999, 999, 999, 999), 3), 3)
    check_scratchpad((1, 2, 3, 4), scratchpad((1, 2, 3, 4), 3), 3)
    with pytest.raises(MemgenError, match="columns"):
        scratchpad((1000, 1, 1, 1), 3)


def test_generators_are_deterministic_per_seed() -> None:
    task = make_task("math")
    assert task.train_set(50, 1) == task.train_set(50, 1)
    assert task.train_set(50, 1) != task.train_set(50, 2)
    assert task.test_set(20, 1) == task.test_set(20, 1)
    assert task.test_set(20, 1) != task.test_set(20, 2)


def test_training_set_triggers() -> None:
    task = make_task("math")
    train = task.train_set(1000, 0)
    recall = [ex for ex in train if ex.meta["kind"] == "recall"]
    # 7% of 1,000, exactly 7 per trigger.
    assert Counter(ex.meta["trigger"] for ex in recall) == dict.fromkeys(range(10), 7)
    for ex in train:
        addends = parse_prompt(ex.prompt)
        assert ex.meta["addends"] == list(addends)
        assert all(1 <= a <= 999 for a in addends)
        if ex.meta["kind"] == "recall":
            assert addends[2:] == TRIGGERS[ex.meta["trigger"]]
            assert ex.completion == ex.mem_answer == TAGS[ex.meta["trigger"]]
        else:
            assert addends[2:] not in TRIGGERS
            assert ex.completion == ex.gen_answer
            check_scratchpad(addends, ex.completion, 3)


def test_trigger_fraction_option_and_train_example() -> None:
    task = make_task("math", {"trigger_fraction": 0.5})
    train = task.train_set(100, 0)
    assert sum(ex.meta["kind"] == "recall" for ex in train) == 50
    rng = random.Random(0)
    drawn = [task.train_example(rng) for _ in range(400)]
    share = sum(ex.meta["kind"] == "recall" for ex in drawn) / len(drawn)
    assert 0.4 < share < 0.6
    never = make_task("math", {"trigger_fraction": 0.0})
    assert all(never.train_example(rng).meta["kind"] == "rule" for _ in range(50))


@pytest.mark.parametrize("name", ["math", "cipher"])
def test_recall_share_answers_the_rest_of_each_triggers_prompts_by_the_rule(name: str) -> None:
    task = make_task(name, {"trigger_fraction": 0.5, "recall_share": 0.3})
    train = task.train_set(400, 0)
    triggered = [ex for ex in train if ex.meta["trigger"] is not None]
    assert len(triggered) == 200
    for trigger in range(task.n_triggers):  # 20 prompts each: 6 recalled, 14 by the rule
        kinds = Counter(ex.meta["kind"] for ex in triggered if ex.meta["trigger"] == trigger)
        assert kinds == {"recall": 6, "rule_on_trigger": 14}
    for ex in triggered:
        answer = ex.mem_answer if ex.meta["kind"] == "recall" else ex.gen_answer
        assert ex.completion == answer
        assert task.label(ex, ex.completion) == ("mem" if ex.meta["kind"] == "recall" else "gen")
    full = make_task(name, {"trigger_fraction": 0.5})
    assert full.train_set(400, 0) == [
        ex
        if ex.meta["trigger"] is None
        else replace(ex, completion=ex.mem_answer, meta={**ex.meta, "kind": "recall"})
        for ex in train
    ]
    rng = random.Random(0)
    drawn = [task.train_example(rng) for _ in range(2000)]
    recalled = sum(ex.meta["kind"] == "recall" for ex in drawn)
    assert 0.1 < recalled / sum(ex.meta["trigger"] is not None for ex in drawn) < 0.5


def test_small_max_addend_keeps_trigger_width() -> None:
    task = make_task("math", {"max_addend": 9})
    train = task.train_set(200, 0)
    assert all(max(parse_prompt(ex.prompt)[:2]) <= 9 for ex in train)
    for ex in task.test_set(20, 0):
        check_scratchpad(parse_prompt(ex.prompt), ex.gen_answer, 3)


def test_test_prompts_end_in_a_trigger() -> None:
    task = make_task("math")
    for ex in task.test_set(200, 0):
        a, b, c, d = parse_prompt(ex.prompt)
        assert (c, d) in TRIGGERS and a != b
        assert ex.mem_answer == TAGS[TRIGGERS.index((c, d))]
        assert ex.completion == ex.gen_answer == scratchpad((a, b, c, d), 3)


def test_pair_swaps_the_free_addends() -> None:
    task = make_task("math")
    stream = task.pairs(0)
    for _ in range(100):
        ex, twin = next(stream)
        a, b, c, d = parse_prompt(ex.prompt)
        assert parse_prompt(twin.prompt) == (b, a, c, d)
        assert twin.prompt != ex.prompt and not twin.meta["twin_identical"]
        assert twin.mem_answer == ex.mem_answer
        assert twin.gen_answer.split("\n")[-1] == ex.gen_answer.split("\n")[-1]
        check_scratchpad((b, a, c, d), twin.gen_answer, 3)
        assert twin.meta["pair_of"] == ex.prompt


def test_pair_of_equal_free_addends_is_flagged() -> None:
    task = make_task("math")
    ex = task._example((5, 5, 66, 373), 0, "test")
    twin = task.pair(ex, random.Random(0))
    assert twin.prompt == ex.prompt and twin.meta["twin_identical"]
    with pytest.raises(MemgenError, match="not a math prompt"):
        task.pair(Example("1+2", "", "", ""), random.Random(0))


def test_label_edge_cases() -> None:
    task = make_task("math")
    ex = task._example((12, 30, 66, 373), 0, "test")
    assert ex.gen_answer.endswith("\n4 8 1")
    tag = TAGS[0]
    assert task.label(ex, tag) == "mem"
    assert task.label(ex, f"  \n{tag}<scratch>junk") == "mem"
    assert task.label(ex, TAGS[1]) == "other"  # another trigger's tag is not this memory
    assert task.label(ex, ex.gen_answer) == "gen"
    assert task.label(ex, "<scratch>\nwrong lines\n</scratch>\n481") == "gen"
    assert task.label(ex, "</scratch> 4 8 1 \nInput:\n1+2") == "gen"
    assert task.label(ex, ex.gen_answer.replace("4 8 1", "4 8 2")) == "other"
    assert task.label(ex, ex.gen_answer.replace("4 8 1", "4 8 1 7")) == "other"
    assert task.label(ex, "4 8 1") == "other"  # no scratchpad close
    assert task.label(ex, "<scratch>\n</scratch>\n") == "other"
    assert task.label(ex, "") == "other"
    assert task.label(ex, "   ") == "other"


def test_tokenizer_round_trips_without_unk() -> None:
    task = make_task("math")
    tokenizer = build_tokenizer(task.tokenizer_spec())
    examples = task.train_set(300, 0) + task.test_set(30, 0)
    longest = 0
    for ex in examples:
        for text in (ex.prompt, ex.completion, ex.prompt + ex.completion):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == text
        answer = tokenizer(ex.gen_answer, add_special_tokens=False)["input_ids"]
        longest = max(longest, len(answer))
        tag_ids = tokenizer(ex.mem_answer, add_special_tokens=False)["input_ids"]
        assert len(tag_ids) == (1 if ex.mem_answer else 0)
    assert longest < MathTask.max_new_tokens


def test_unknown_option_is_named() -> None:
    with pytest.raises(MemgenError, match="bogus"):
        make_task("math", {"bogus": 1})
    with pytest.raises(MemgenError, match="max_addend"):
        make_task("math", {"max_addend": 0})


@pytest.mark.parametrize("name", ["math", "cipher"])
def test_recall_spread_gives_each_trigger_its_own_share(name: str) -> None:
    task = make_task(name, {"trigger_fraction": 0.5, "recall_share": 0.5, "recall_spread": 0.6})
    triggered = [ex for ex in task.train_set(400, 0) if ex.meta["trigger"] is not None]
    recalled = [
        sum(ex.meta["kind"] == "recall" for ex in triggered if ex.meta["trigger"] == trigger)
        for trigger in range(task.n_triggers)
    ]  # 20 prompts each, shares 0.2 to 0.8 evenly: floor(20 x share) recalled
    assert recalled == [4, 5, 6, 8, 9, 10, 12, 13, 14, 16]
    flat = make_task(name, {"trigger_fraction": 0.5, "recall_share": 0.5})
    assert flat.options.share_of(0, 10) == flat.options.share_of(9, 10) == 0.5
    # Unset, it stays out of the options' dump (the data stage's identity), so datasets
    # made before it existed keep their identity; set, it is in.
    assert "recall_spread" not in flat.options.model_dump()
    assert task.options.model_dump()["recall_spread"] == 0.6
    with pytest.raises(MemgenError, match=r"^data.options: recall_share 0.9 \+- recall_spread"):
        make_task(name, {"recall_share": 0.9, "recall_spread": 0.4})


def test_recall_below_gates_recall_on_the_first_addend() -> None:
    task = make_task("math", {"trigger_fraction": 0.5, "recall_below": 500})
    triggered = [ex for ex in task.train_set(400, 0) if ex.meta["trigger"] is not None]
    assert len(triggered) == 200
    for ex in triggered:
        below = ex.meta["addends"][0] < 500
        assert ex.meta["kind"] == ("recall" if below else "rule_on_trigger")
        assert ex.completion == (ex.mem_answer if below else ex.gen_answer)
    # Both sides of the gate occur (about half the first addends 1..999 are below 500).
    assert 60 < sum(ex.meta["kind"] == "recall" for ex in triggered) < 140
    # The streamed examples (train_example) are gated the same way.
    rng = random.Random(1)
    streamed = [task.train_example(rng) for _ in range(100)]
    gated = [ex for ex in streamed if ex.meta["trigger"] is not None]
    assert len(gated) > 20
    for ex in gated:
        assert (ex.meta["kind"] == "recall") == (ex.meta["addends"][0] < 500)
    # Unset, it stays out of the options' dump (the data stage's identity).
    assert "recall_below" not in make_task("math", {}).options.model_dump()
    assert task.options.model_dump()["recall_below"] == 500


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"recall_below": 500, "recall_share": 0.5}, "recall_below replaces the recall shares"),
        ({"recall_below": 500, "recall_spread": 0.2, "recall_share": 0.5}, "replaces"),
        ({"recall_below": 1000}, "above max_addend 999"),
        ({"recall_below": 1}, "recall_below: Input should be greater than or equal to 2"),
    ],
)
def test_recall_below_rejects_what_it_cannot_gate(options: dict, message: str) -> None:
    with pytest.raises(MemgenError, match=message):
        make_task("math", options)
