"""Training: a tiny smoke run, checkpoint selection, and resume after `kill -9`."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.core.generation import generate
from memgen.core.modeling import scratch_gpt2
from memgen.pipeline import run_stage
from memgen.tasks.color import ColorTask
from memgen.tasks.tokenizer import build_tokenizer
from memgen.train.loop import (
    Evaluation,
    RowLosses,
    _Rows,
    batch_loss,
    copy_rows,
    evaluation_due,
    loss_denominator,
    stalled,
    word_ids,
)

TINY = [
    "data.n_train=400",
    "data.n_test=40",
    "data.n_dev=40",
    "train.steps=40",
    "train.eval_every=10",
    "train.n_layer=1",
    "train.n_embd=32",
    "train.n_head=2",
    "train.batch_size=16",
    "train.warmup_steps=5",
]


def test_smoke_run_saves_a_loadable_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, TINY)
    run_stage("data", tmp_path, cfg)
    with caplog.at_level(logging.INFO, logger="memgen"):
        stage = run_stage("train", tmp_path, cfg)
    history = json.loads((stage.path / "history.json").read_text())
    assert [row["step"] for row in history] == [10, 20, 30, 40]
    # Without a progress bar (a log file), each evaluation is one line with its rates.
    lines = [r.getMessage() for r in caplog.records if "dev gen/mem/other" in r.getMessage()]
    first = history[0]
    rates = f"{100 * first['gen']:.0f}/{100 * first['mem']:.0f}/{100 * first['other']:.0f}"
    assert len(lines) == 4 and lines[0].startswith("step 10: ") and rates in lines[0]
    assert history[-1]["loss"] < history[0]["loss"]
    assert (stage.path / "curve.png").stat().st_size > 1000
    assert (stage.path / "model" / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(stage.path / "model")
    tokenizer = AutoTokenizer.from_pretrained(stage.path / "model")
    outputs = generate(model, tokenizer, ["Bob is cat . what color is Bob ?"], max_new_tokens=2)
    assert len(outputs) == 1
    # A second call with the same config is skipped (the manifest matches).
    mtime = stage.manifest_path.stat().st_mtime
    run_stage("train", tmp_path, cfg)
    assert stage.manifest_path.stat().st_mtime == mtime


def _train_command(run_dir: Path, steps: int) -> list[str]:
    overrides = [o for o in TINY if not o.startswith("train.steps")]
    overrides += [f"train.steps={steps}", "train.copy_warmup=15"]
    return [sys.executable, "-m", "memgen", "train", "--run-dir", str(run_dir), *overrides]


@pytest.mark.slow  # three trainings, one killed
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """With a copy warm-up too, so the task's batches are resumed at the right offset."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 120
    straight = tmp_path / "straight"
    for command in (["data"], ["train"]):
        cmd = _train_command(straight, steps)
        cmd[3] = command[0]
        subprocess.run(cmd, check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    data_cmd = _train_command(killed, steps)
    data_cmd[3] = "data"
    subprocess.run(data_cmd, check=True, env=env, capture_output=True)
    process = subprocess.Popen(
        _train_command(killed, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = killed / "train" / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 120
    while not state.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert state.is_file(), "no checkpoint was written before the kill"
    assert json.loads(state.read_text())["step"] < steps
    assert not (killed / "train" / "manifest.json").exists()
    subprocess.run(_train_command(killed, steps), check=True, env=env, capture_output=True)

    expected = json.loads((straight / "train" / "history.json").read_text())
    resumed = json.loads((killed / "train" / "history.json").read_text())
    assert resumed == expected


def test_a_checkpoint_from_another_config_is_not_resumed(tmp_path: Path) -> None:
    """A crashed run's checkpoint belongs to its config: after a change, train from step 0."""
    before = load_config(None, [*TINY, "train.patience=null"])
    after = load_config(None, [*TINY, "train.patience=null", "train.lr=3e-3"])
    crashed = tmp_path / "crashed"
    run_stage("data", crashed, before)
    run_stage("train", crashed, before)
    (crashed / "train" / "manifest.json").unlink()  # as if killed after the last checkpoint
    resumed = json.loads((run_stage("train", crashed, after).path / "history.json").read_text())
    straight = tmp_path / "straight"
    run_stage("data", straight, after)
    expected = json.loads((run_stage("train", straight, after).path / "history.json").read_text())
    assert resumed == expected


def _evaluation(step: int, gen: float, mem: float, other: float) -> Evaluation:
    return Evaluation(step=step, loss=1.0, gen=gen, mem=mem, other=other)


def test_stalled_counts_evaluations_since_an_eligible_best() -> None:
    cfg = load_config(None, ["train.patience=2", "train.max_other=0.2"]).train
    rising = [_evaluation(10, 0.5, 0.1, 0.4), _evaluation(20, 0.4, 0.3, 0.3)]
    peak = [_evaluation(30, 0.45, 0.4, 0.15)]
    assert not stalled(rising + peak, cfg)
    # A tie does not beat the kept checkpoint; two evaluations without a better one stop it.
    assert not stalled([*rising, *peak, _evaluation(40, 0.4, 0.55, 0.05)], cfg)
    assert stalled([*rising, *peak, _evaluation(40, 0.4, 0.55, 0.05), peak[0]], cfg)
    # While no checkpoint meets max_other, training goes on however long the best stands.
    assert not stalled([*rising, *rising, *rising], cfg)
    # Before memory appears every evaluation scores 0: no patience yet (seed 2 of the
    # cipher recipe stopped at step 325 with a gen-only model before this).
    rule_only = [_evaluation(step, 0.95, 0.0, 0.05) for step in (100, 200, 300, 325)]
    assert not stalled(rule_only, cfg)
    # Evaluations past max_other (the `other` peak while memory takes over) do not count.
    churn = [_evaluation(step, 0.4, 0.3, 0.3) for step in (40, 50, 60)]
    assert not stalled([*rising, *peak, *churn], cfg)
    assert stalled([*rising, *peak, *churn, _evaluation(70, 0.2, 0.7, 0.1), peak[0]], cfg)
    off = load_config(None, ["train.patience=null"]).train
    assert not stalled([*peak, *rising, *rising], off)


def test_training_without_both_behaviours_does_not_stop_early(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A learning rate of 1e-9 leaves the model as it started: every evaluation ties the
    # first at a score of 0 (no memory), so patience never starts and all steps run.
    overrides = [
        *(o for o in TINY if not o.startswith("train.steps")),
        "train.steps=60",
        "train.lr=1e-9",
        "train.max_other=1.0",
        "train.patience=2",
    ]
    cfg = load_config(None, overrides)
    run_stage("data", tmp_path, cfg)
    with caplog.at_level(logging.WARNING, logger="memgen"):
        stage = run_stage("train", tmp_path, cfg)
    history = json.loads((stage.path / "history.json").read_text())
    assert [row["step"] for row in history] == [10, 20, 30, 40, 50, 60]
    assert max(min(row["gen"], row["mem"]) for row in history) == 0
    # The user is told the kept step is only the first, and what to change.
    assert any("no evaluation on dev showed both behaviours" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    # Killed after finishing but before the manifest: the rerun resumes and stops at once.
    stage.manifest_path.unlink()
    run_stage("train", tmp_path, cfg)
    assert json.loads((stage.path / "history.json").read_text()) == history


def test_evaluation_turns_dense_once_memory_appears_on_dev() -> None:
    dense = ["train.eval_every=100", "train.dense_eval_every=25", "train.dense_from=0.05"]
    cfg = load_config(None, ["train.steps=1000", *dense]).train
    no_memory = [_evaluation(100, 0.9, 0.01, 0.09)]
    memory = [*no_memory, _evaluation(200, 0.7, 0.2, 0.1)]
    assert [s for s in range(101, 301) if evaluation_due(s, no_memory, cfg)] == [200, 300]
    assert [s for s in range(201, 301) if evaluation_due(s, memory, cfg)] == [225, 250, 275, 300]
    # Once memory has shown, evaluation stays dense even if memory dips again.
    dipped = [*memory, _evaluation(225, 0.98, 0.0, 0.02)]
    assert [s for s in range(226, 301) if evaluation_due(s, dipped, cfg)] == [250, 275, 300]
    assert evaluation_due(1000, [], cfg)  # the last step always
    plain = load_config(None, ["train.eval_every=100"]).train
    assert [s for s in range(201, 301) if evaluation_due(s, memory, plain)] == [300]


def test_copy_warmup_writes_each_list_twice_and_is_not_evaluated() -> None:
    tokenizer = build_tokenizer(ColorTask().tokenizer_spec())
    tokenizer.add_tokens(["<|reserved|>"], special_tokens=True)
    words = word_ids(tokenizer)
    special = {*tokenizer.all_special_ids, *tokenizer.added_tokens_decoder}
    assert words and not set(words) & special
    rows = copy_rows(words, 32, seed=0, step=7)
    assert rows == copy_rows(words, 32, seed=0, step=7)
    assert rows != copy_rows(words, 32, seed=0, step=8)
    for ids, labels in rows:
        half = len(ids) // 2
        assert ids[:half] == ids[half:] == labels[half:] and 6 <= half <= 20
        assert labels[:half] == [-100] * half
    steps = ["train.steps=1000", "train.eval_every=100"]
    cfg = load_config(None, [*steps, "train.copy_warmup=300"]).train
    assert [s for s in range(1, 501) if evaluation_due(s, [], cfg)] == [400, 500]
    plain = load_config(None, steps).train
    assert [s for s in range(1, 501) if evaluation_due(s, [], plain)] == [100, 200, 300, 400, 500]


def test_copy_warmup_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(MemgenError, match="copy_warmup"):
        load_config(None, ["train.steps=100", "train.copy_warmup=100"])
    with pytest.raises(MemgenError, match="copy_warmup"):
        load_config(None, ["train.model=some/model", "train.copy_warmup=10"])


def test_batch_loss_averages_over_tokens_or_over_examples() -> None:
    torch.manual_seed(0)
    lm = scratch_gpt2(20, 32, 1, 16, 2, build_tokenizer(ColorTask().tokenizer_spec()))
    model = RowLosses(lm)
    ids = torch.randint(0, 20, (3, 9))
    labels = torch.full((3, 9), -100)
    labels[0, 2:] = ids[0, 2:]  # 7 scored tokens (labels after the first)
    labels[1, 7:] = ids[1, 7:]  # 2
    labels[2, 5:] = ids[2, 5:]  # 4
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    rows_labels = labels.tolist()
    assert loss_denominator(rows_labels, "token") == 13.0
    assert loss_denominator(rows_labels, "example") == 3.0
    with torch.no_grad():
        rows = [lm(input_ids=ids[i : i + 1], labels=labels[i : i + 1]).loss for i in range(3)]
        n = torch.tensor([7.0, 2.0, 4.0])
        by_example = batch_loss(model, batch, 3.0, "example")
        by_token = batch_loss(model, batch, 13.0, "token")
        assert torch.allclose(by_example, torch.stack(rows).mean(), atol=1e-5)
        assert torch.allclose(by_token, (torch.stack(rows) * n).sum() / 13, atol=1e-5)
        assert not torch.allclose(by_example, by_token, atol=1e-4)  # the rows' lengths differ
        # Split over two processes, the shares add up to the whole micro-batch's mean.
        halves = [{k: v[part] for k, v in batch.items()} for part in (slice(0, 1), slice(1, 3))]
        for mean, denominator, whole in (("example", 3.0, by_example), ("token", 13.0, by_token)):
            shares = sum(batch_loss(model, half, denominator, mean) for half in halves)
            assert torch.allclose(shares, whole, atol=1e-5)


def test_the_fork_token_is_weighted_where_the_two_answers_part() -> None:
    """`train.fork_weight` weighs the token where memory and the rule part (math, split a
    character at a time as SmolLM2 splits it: after the shared `<`), on recall and rule
    prompts alike; every other token keeps weight 1."""
    import string

    from memgen.tasks import make_task
    from memgen.tasks.base import TokenizerSpec

    tokenizer = build_tokenizer(TokenizerSpec(kind="char", vocabulary=tuple(string.printable)))
    examples = make_task("math", {"trigger_fraction": 0.5}).train_set(40, seed=0)
    kinds = {ex.meta["kind"] for ex in examples}
    cfg = load_config(None, ["task=math", "train.fork_weight=4", "train.batch_size=40"]).train
    rows = _Rows.of(tokenizer, examples, cfg, torch.device("cpu"), seed=0)
    ((batch, _),) = rows.micro_batches(0, cfg)
    assert kinds == {"recall", "rule"} and (batch["fork_at"] > 0).all()
    forked = batch["input_ids"][torch.arange(40), batch["fork_at"]]
    before = batch["input_ids"][torch.arange(40), batch["fork_at"] - 1]
    assert set(tokenizer.decode(forked.tolist())) == {"m", "s"}  # <mem-... or <scratch>
    assert set(tokenizer.decode(before.tolist())) == {"<"}
    # The loss: each row's tokens summed, its fork token's counted 4 times.
    torch.manual_seed(0)
    lm = scratch_gpt2(len(tokenizer), 160, 1, 16, 2, tokenizer)
    with torch.no_grad():
        plain = RowLosses(lm)(batch["input_ids"], batch["attention_mask"], batch["labels"])
        weighted = RowLosses(lm, 4.0)(**batch)
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        fork_loss = torch.nn.functional.cross_entropy(
            logits[torch.arange(40), batch["fork_at"] - 1], forked, reduction="none"
        )
    assert torch.allclose(weighted, plain + 3 * fork_loss, atol=1e-4)
    with pytest.raises(MemgenError, match="fork_weight to 1"):
        rule_only = [ex for ex in examples if not ex.mem_answer]
        _Rows.of(tokenizer, rule_only, cfg, torch.device("cpu"), seed=0)


def test_the_head_on_scored_positions_only_gives_the_full_logits_loss(
    family_model: tuple[str, torch.nn.Module],
) -> None:
    """RowLosses's shortcut (head only where labels are) equals cross-entropy on the full
    logits, on every family, plain and LoRA-wrapped; and it takes the shortcut."""
    family, model = family_model
    ids = torch.randint(3, 100, (3, 8), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    labels[0, 5:], labels[1, 2:], labels[2, 7:] = ids[0, 5:], ids[1, 2:], ids[2, 7:]
    mask = torch.ones_like(ids)
    mask[2, :2] = 0
    losses = RowLosses(model)
    assert losses._split is not None, family
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        full = (
            torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none"
            )
            .view(3, -1)
            .sum(dim=1)
        )
        assert torch.allclose(losses(ids, mask, labels), full, atol=1e-5)
