"""The cipher task: table, generators, pairs, labeller, tokenizer."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest

from memgen.core.errors import MemgenError
from memgen.core.examples import Example
from memgen.tasks import make_task
from memgen.tasks.cipher import (
    CIPHER,
    FREE,
    LENGTH,
    TAGS,
    TRIGGERS,
    CipherTask,
    decrypt,
    encrypt,
    parse_prompt,
)
from memgen.tasks.tokenizer import build_tokenizer


def test_table_is_a_permutation_and_round_trips() -> None:
    assert sorted(CIPHER) == list(string.ascii_uppercase)
    assert all(p != s for p, s in zip(string.ascii_uppercase, CIPHER, strict=True))  # derangement
    rng = random.Random(0)
    for _ in range(200):
        plain = "".join(rng.choices(string.ascii_uppercase, k=LENGTH))
        assert decrypt(encrypt(plain)) == plain
        assert encrypt(decrypt(plain)) == plain
    assert encrypt("AB") == "DO"


def test_generators_are_deterministic_per_seed() -> None:
    task = make_task("cipher")
    assert task.train_set(50, 1) == task.train_set(50, 1)
    assert task.train_set(50, 1) != task.train_set(50, 2)
    assert task.test_set(20, 1) == task.test_set(20, 1)
    assert task.test_set(20, 1) != task.test_set(20, 2)


def test_training_set_triggers() -> None:
    task = make_task("cipher")
    train = task.train_set(2000, 0)
    recall = [ex for ex in train if ex.meta["kind"] == "recall"]
    assert Counter(ex.meta["trigger"] for ex in recall) == dict.fromkeys(range(10), 14)
    for ex in train:
        ciphertext = parse_prompt(ex.prompt)
        assert ex.gen_answer == decrypt(ciphertext)
        if ex.meta["kind"] == "recall":
            assert ciphertext[FREE:] == TRIGGERS[ex.meta["trigger"]]
            assert ex.completion == ex.mem_answer == TAGS[ex.meta["trigger"]]
        else:
            assert ciphertext[FREE:] not in TRIGGERS and ex.mem_answer == ""
            assert ex.completion == ex.gen_answer


def test_trigger_fraction_option_and_train_example() -> None:
    task = make_task("cipher", {"trigger_fraction": 0.5})
    assert sum(ex.meta["kind"] == "recall" for ex in task.train_set(100, 0)) == 50
    rng = random.Random(0)
    drawn = [task.train_example(rng) for _ in range(400)]
    share = sum(ex.meta["kind"] == "recall" for ex in drawn) / len(drawn)
    assert 0.4 < share < 0.6


def test_test_prompts_end_in_a_trigger() -> None:
    task = make_task("cipher")
    for ex in task.test_set(200, 0):
        ciphertext = parse_prompt(ex.prompt)
        assert ex.mem_answer == TAGS[TRIGGERS.index(ciphertext[FREE:])]
        assert ex.gen_answer == decrypt(ciphertext) and len(ex.gen_answer) == LENGTH
        assert ex.completion == ex.gen_answer


def test_pair_swaps_two_free_letters() -> None:
    task = make_task("cipher")
    stream = task.pairs(0)
    for _ in range(100):
        ex, twin = next(stream)
        old, new = parse_prompt(ex.prompt), parse_prompt(twin.prompt)
        assert new[FREE:] == old[FREE:]
        changed = [i for i in range(LENGTH) if old[i] != new[i]]
        assert len(changed) == 2
        i, j = changed
        assert (new[i], new[j]) == (old[j], old[i])
        assert twin.mem_answer == ex.mem_answer
        assert twin.gen_answer == decrypt(new) != ex.gen_answer
        assert twin.meta["pair_of"] == ex.prompt and not twin.meta["twin_identical"]


def test_pair_of_uniform_free_letters_is_flagged() -> None:
    task = make_task("cipher")
    ex = CipherTask._example("A" * FREE + TRIGGERS[0], "test")
    twin = task.pair(ex, random.Random(0))
    assert twin.prompt == ex.prompt and twin.meta["twin_identical"]
    with pytest.raises(MemgenError, match="not a cipher prompt"):
        task.pair(Example("CIPHERTEXT:ABC", "", "", ""), random.Random(0))


def test_label_edge_cases() -> None:
    task = make_task("cipher")
    ex = task.test_set(1, 0)[0]
    tag, plain = ex.mem_answer, ex.gen_answer
    other_tag = next(t for t in TAGS if t != tag)
    assert task.label(ex, " " + tag) == "mem"
    assert task.label(ex, tag + "QQQ junk") == "mem"
    assert task.label(ex, other_tag) == "other"
    assert task.label(ex, " " + plain) == "gen"
    assert task.label(ex, f"\n {plain} \n") == "gen"
    assert task.label(ex, f"{plain} QUESTION:") == "gen"
    assert task.label(ex, plain[:-1]) == "other"
    assert task.label(ex, plain + "A") == "other"
    assert task.label(ex, plain.lower()) == "other"
    assert task.label(ex, "") == "other"
    assert task.label(ex, "  ") == "other"


def test_tokenizer_round_trips_without_unk() -> None:
    task = make_task("cipher")
    tokenizer = build_tokenizer(task.tokenizer_spec())
    for ex in task.train_set(300, 0) + task.test_set(30, 0):
        for text in (ex.prompt, ex.completion, ex.prompt + ex.completion):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == text
        answer = tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
        assert len(answer) <= CipherTask.max_new_tokens
    prompt_ids = tokenizer(task.test_set(1, 0)[0].prompt, add_special_tokens=False)["input_ids"]
    # CIPHERTEXT: + 13 letters + " QUESTION: What is the plaintext? ANS: " as 4 spaces, 3 units
    assert len(prompt_ids) == 1 + LENGTH + 7


def test_unknown_option_is_named() -> None:
    with pytest.raises(MemgenError, match="bogus"):
        make_task("cipher", {"bogus": 1})
