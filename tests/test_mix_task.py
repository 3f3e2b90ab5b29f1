"""Several tasks in one network: the mixture task, its tokenizer, and per-task selection."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.pipeline import check_trained_on, made_with, run_stage
from memgen.tasks import make_task
from memgen.tasks.base import TokenizerSpec
from memgen.tasks.mix import MixTask, apportion
from memgen.tasks.tokenizer import build_tokenizer
from memgen.train.loop import Evaluation


def _mix(options: dict | None = None) -> MixTask:
    task = make_task("mix", options)
    assert isinstance(task, MixTask)
    return task


def test_the_union_tokenizer_reads_every_task_as_its_own_tokenizer_does() -> None:
    mix = _mix()
    tokenizer = build_tokenizer(mix.tokenizer_spec())
    rng = random.Random(0)
    for name, task in mix.components.items():
        alone = build_tokenizer(task.tokenizer_spec())
        for example in [task.train_example(rng) for _ in range(50)]:
            text = example.prompt + example.completion
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == text
            # The same tokens as the task's own tokenizer, but for the spaces between
            # color's words, which the union reads as tokens of their own.
            tokens = [t for t in tokenizer.convert_ids_to_tokens(ids) if t != " "]
            own = [t for t in alone.convert_ids_to_tokens(alone(text)["input_ids"]) if t != " "]
            assert tokens == own, name
    # A whole word never matches inside a longer one, nor splits a unit.
    tokens = tokenizer.tokenize("Bob is catfish . What is the plaintext? CAT")
    assert "cat" not in tokens and "What is the plaintext?" in tokens
    assert tokens[:3] == ["Bob", " ", "is"]


def test_word_specs_alone_stay_a_word_tokenizer() -> None:
    spec = TokenizerSpec.union([TokenizerSpec("word", ("a", "b")), TokenizerSpec("word", ("b",))])
    assert spec == TokenizerSpec("word", ("a", "b"))


def test_training_data_follows_the_weights_and_keeps_each_tasks_schedule() -> None:
    mix = _mix({"tasks": {"math": {"trigger_fraction": 0.1}, "cipher": {}}, "weights": {"math": 3}})
    train = mix.train_set(400, seed=0)
    by_task = {name: [ex for ex in train if ex.meta["task"] == name] for name in mix.components}
    assert {name: len(rows) for name, rows in by_task.items()} == {"math": 300, "cipher": 100}
    # The component's own train_set: exactly round(300 x 0.1) triggered math prompts.
    assert sum(ex.meta["kind"] == "recall" for ex in by_task["math"]) == 30
    assert train != mix.train_set(400, seed=1)
    assert [ex.meta["task"] for ex in train[:20]] != sorted(ex.meta["task"] for ex in train[:20])


def test_test_dev_and_pairs_come_from_every_task_and_are_labelled_by_it() -> None:
    mix = _mix()
    test = mix.test_set(30, seed=0)
    dev = mix.dev_set(30, 0, test)
    for split in (test, dev):
        assert [ex.meta["task"] for ex in split] == ["cipher"] * 10 + ["color"] * 10 + ["math"] * 10
    assert not {ex.prompt for ex in dev} & {ex.prompt for ex in test}
    for example in test:
        part = mix.components[example.meta["task"]]
        assert mix.label(example, example.gen_answer) == part.label(example, example.gen_answer)
        assert mix.label(example, example.mem_answer) == "mem"
    pairs = mix.pairs(0)
    names = [next(pairs)[1].meta["task"] for _ in range(6)]
    assert names == ["cipher", "color", "math"] * 2
    parts = mix.split_by_task(test)
    assert [(name, rows[0], len(rows)) for name, _, rows in parts] == [
        ("cipher", 0, 10), ("color", 10, 10), ("math", 20, 10)
    ]  # fmt: skip
    assert mix.max_new_tokens == max(t.max_new_tokens for t in mix.components.values())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tasks": {"colour": {}}}, "unknown task 'colour'; did you mean 'color'"),
        ({"tasks": {"mix": {}}}, "cannot contain a mixture"),
        ({"tasks": {}}, "at least one task"),
        ({"tasks": {"color": {"max_names": 99}}}, r"data\.options\.tasks\.color\.max_names"),
        ({"tasks": {"color": {"colours": 1}}}, r"unknown option for task 'color' \(allowed"),
        ({"tasks": {"color": {}}, "weights": {"math": 1}}, "add them to tasks"),
        ({"tasks": {"color": {}}, "weights": {"color": 0}}, "all 0"),
        ({"tasks": {"color": {}}, "weights": {"color": float("inf")}}, "finite"),
    ],
)
def test_bad_mixtures_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(MemgenError, match=message):
        make_task("mix", options)


def test_component_defaults_and_order_are_fixed_so_one_mixture_is_one_model() -> None:
    options = _mix({"tasks": {"math": {}, "cipher": {}}}).options.model_dump(mode="json")
    assert options["tasks"] == {
        "cipher": {"spaced": False, "trigger_fraction": 0.07, "recall_share": 1.0},
        "math": {"trigger_fraction": 0.07, "recall_share": 1.0, "max_addend": 999},
    }
    swapped = _mix({"tasks": {"cipher": {}, "math": {}}}).options.model_dump(mode="json")
    assert list(swapped["tasks"]) == list(options["tasks"])
    with pytest.raises(MemgenError, match="cover the mixture's 3 tasks"):
        _mix().test_set(2, seed=0)


def test_a_mixture_scores_as_its_worst_task() -> None:
    both = {"gen": 0.4, "mem": 0.4, "other": 0.2}
    rule_only = {"gen": 0.9, "mem": 0.0, "other": 0.1}
    mixed = Evaluation(1, 0.0, 0.65, 0.2, 0.15, by_task={"a": both, "b": rule_only})
    assert mixed.score("min_gen_mem", 0.25) == (True, 0.0, 0.2)
    # While one task has no memory, the other's progress breaks the tie.
    later = Evaluation(2, 0.0, 0.5, 0.3, 0.2, by_task={"a": rule_only, "b": rule_only})
    assert later.score("min_gen_mem", 0.25) < mixed.score("min_gen_mem", 0.25)
    assert mixed.most_mem() == 0.4
    noisy = {"gen": 0.3, "mem": 0.3, "other": 0.4}
    assert not Evaluation(1, 0.0, 0.35, 0.35, 0.3, by_task={"a": both, "b": noisy}).score(
        "min_gen_mem", 0.25
    )[0]


@pytest.mark.slow  # an end-to-end training
def test_one_mixture_model_analysed_on_one_task_as_it_is(tmp_path: Path) -> None:
    tiny = ["train.n_layer=1", "train.n_embd=32", "train.n_head=2", "data.n_test=12"]
    tiny += ["data.n_dev=12", "train.batch_size=8", "train.warmup_steps=2"]
    mixed = load_config(None, ["task=mix", "data.n_train=60", "train.steps=4", *tiny])
    run_stage("data", tmp_path / "mix", mixed)
    stage = run_stage("train", tmp_path / "mix", mixed)
    history = json.loads((stage.path / "history.json").read_text())
    assert set(history[-1]["by_task"]) == {"color", "math", "cipher"}
    model = stage.path / "model"
    cipher = load_config(None, [*_cipher_on(model), *tiny])
    run_stage("data", tmp_path / "cipher", cipher)
    analysed = run_stage("train", tmp_path / "cipher", cipher)
    rows = json.loads((analysed.path / "history.json").read_text())
    assert [(row["step"], row["loss"]) for row in rows] == [(0, None)]
    # The kept model is the mixture's, unchanged (no adapter, no training).
    kept = analysed.path / "model" / "model.safetensors"
    assert kept.read_bytes() == (model / "model.safetensors").read_bytes()
    assert analysed.manifest()["summary"]["n_trainable"] == 0
    # The config rebuilt from manifests (cross-run steering) skips the base's file hashes.
    assert made_with(tmp_path / "cipher", "train").train.model == str(model)
    # A task the mixture was not trained on is refused: its words are not in the tokenizer.
    alone = load_config(None, ["task=cipher", "data.n_train=20", "train.steps=2", *tiny])
    run_stage("data", tmp_path / "alone", alone)
    cipher_only = run_stage("train", tmp_path / "alone", alone).path / "model"
    color = load_config(None, ["task=color", "train.steps=0", f"train.model={cipher_only}", *tiny])
    run_stage("data", tmp_path / "color", color)
    with pytest.raises(MemgenError, match="does not cover task 'color'"):
        run_stage("train", tmp_path / "color", color)
    with pytest.raises(MemgenError, match=r"train\.steps=0"):
        load_config(None, ["train.steps=0"])
    # The memorized cases come from the seed and the options: analysed on other data, the
    # labels would be wrong, so another seed or option is refused with the exact fix.
    check_trained_on(cipher)  # the mixture's own cipher: accepted
    reseeded = load_config(None, [*_cipher_on(model), "seed=1"])
    with pytest.raises(MemgenError, match=r"add seed=0$"):
        check_trained_on(reseeded)
    other = load_config(None, [*_cipher_on(model), "data.options.trigger_fraction=0.3"])
    with pytest.raises(MemgenError, match=r"add data\.options\.trigger_fraction=0\.07$"):
        check_trained_on(other)
    with pytest.raises(MemgenError, match="trained on task 'cipher', not 'color'"):
        check_trained_on(color)
    math_only = load_config(None, ["task=math", "train.steps=0", f"train.model={cipher_only}"])
    with pytest.raises(MemgenError, match="trained on task 'cipher'"):
        check_trained_on(math_only)
    # From the command line: one line, exit 2, and no run folder made.
    done = subprocess.run([sys.executable, "-m", "memgen", "run", "--run-dir", "refused",
                           *_cipher_on(model), "seed=2"], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "add seed=0" in done.stderr, done.stderr
    assert not (tmp_path / "refused").exists()


def _cipher_on(model: Path) -> list[str]:
    """Overrides that analyse `model` as it is on the cipher task."""
    return ["task=cipher", "train.steps=0", f"train.model={model}"]


def test_apportion_sums_to_n() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [3, 1]) == [5, 2]
    assert sum(apportion(101, [0.2, 0.3, 0.5])) == 101
