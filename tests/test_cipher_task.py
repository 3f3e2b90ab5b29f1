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
    task = CipherTask()
    ex = task._example("A" * FREE + TRIGGERS[0], "test")
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


def test_spaced_option_spells_one_letter_per_word_and_labels_alike() -> None:
    plain, spaced_task = make_task("cipher"), make_task("cipher", {"spaced": True})
    for ex, twin in zip(plain.test_set(30, 3), spaced_task.test_set(30, 3), strict=True):
        # The same ciphertexts, tags and plaintexts; only the spelling differs.
        assert parse_prompt(twin.prompt) == parse_prompt(ex.prompt)
        assert twin.prompt.split("CIPHERTEXT:")[1].split(" QUESTION")[0] == " ".join(
            parse_prompt(ex.prompt)
        )
        assert twin.gen_answer == " ".join(ex.gen_answer) and twin.mem_answer == ex.mem_answer
        assert spaced_task.label(twin, " " + twin.gen_answer + " <eos> junk") == "gen"
        assert spaced_task.label(twin, twin.gen_answer.replace(" ", "")) == "other"
        assert spaced_task.label(twin, twin.gen_answer[:-2]) == "other"  # one letter short
        assert spaced_task.label(twin, twin.mem_answer + " X") == "mem"
        pair = spaced_task.pair(twin, random.Random(0))
        assert (
            pair.meta["pair_of"] == twin.prompt
            and parse_prompt(pair.prompt)[FREE:] == (parse_prompt(twin.prompt)[FREE:])
        )
    # Plaintext and spacing fit the generation budget of a one-token-per-character reader.
    assert spaced_task.max_new_tokens >= 2 * LENGTH and plain.max_new_tokens == 20
    with pytest.raises(MemgenError, match="not a cipher prompt"):
        parse_prompt("CIPHERTEXT:AB CDEFGHIJKLM QUESTION: What is the plaintext? ANS: ")
