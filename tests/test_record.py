"""Stage `record` and `record_last_token`: the arrays on disk are the model's activations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.artifacts import Stage
from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.core.examples import read_pairs
from memgen.core.generation import encode_prompt
from memgen.core.hooks import record
from memgen.core.recorded import read_record
from memgen.core.sites import all_sites, site_width
from memgen.pipeline import run_stage
from memgen.record.gradients import margin_gradients
from memgen.record.stage import record_last_token
from memgen.tasks import make_task

Model = tuple[PreTrainedModel, PreTrainedTokenizerBase]


def _prompts(n: int) -> list[str]:
    prompts = [example.prompt for example in make_task("color").test_set(n, seed=0)]
    lengths = {len(p.split()) for p in prompts}
    assert len(lengths) > 1, "padding is only exercised by prompts of different lengths"
    return prompts


@torch.no_grad()
def _one_by_one(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], kind: str
) -> np.ndarray:
    """Each prompt alone, unpadded: the reference for batched recording."""
    rows = []
    sites = all_sites(model, [kind])  # type: ignore[list-item]
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt, chat=False)])
        with record(model, sites) as rec:
            model(input_ids=ids)
        rows.append(torch.stack([rec[site][0] for site in sites]).numpy())
    return np.stack(rows)


def test_batched_recording_equals_one_prompt_at_a_time(tiny_gpt2_with_tokenizer: Model) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    prompts = _prompts(7)
    arrays = record_last_token(
        model, tokenizer, prompts, ["resid", "mlp"], chat=False, batch_size=3
    )
    assert arrays["resid"].shape == (7, 2, 32) and arrays["resid"].dtype == np.float32
    assert arrays["mlp"].shape == (7, 2, site_width(model, "mlp"))
    for kind in ("resid", "mlp"):
        np.testing.assert_allclose(
            arrays[kind], _one_by_one(model, tokenizer, prompts, kind), rtol=1e-4, atol=1e-5
        )


def _write_pairs(path: Path, prompts: list[str]) -> list[dict[str, object]]:
    rows = [
        {
            "pair_id": i // 2,
            "prompt": prompt,
            "label": "mem" if i % 3 else "gen",
            "output": "x",
            "mem_answer": "white",
            "gen_answer": "brown",
        }
        for i, prompt in enumerate(prompts)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def _run_folder(
    tmp_path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> tuple[Path, list[dict[str, object]]]:
    run = tmp_path / "run"
    train, behave = Stage(run, "train"), Stage(run, "behave")
    model.save_pretrained(train.begin() / "model", safe_serialization=True)
    tokenizer.save_pretrained(train.path / "model")
    train.finish({"train": "tiny"}, [], seed=0)
    rows = _write_pairs(behave.begin() / "pairs.jsonl", prompts)
    behave.finish({"behave": "fake"}, [train], seed=0)
    return run, rows


def test_record_stage_writes_what_a_direct_recording_gives(
    tmp_path: Path, tiny_gpt2_with_tokenizer: Model
) -> None:
    model, tokenizer = tiny_gpt2_with_tokenizer
    prompts = _prompts(6)
    run, rows = _run_folder(tmp_path, model, tokenizer, prompts)
    cfg = load_config(None, ["device=cpu", "record.batch_size=4", "record.sites=[resid,mlp,attn]"])
    stage = run_stage("record", run, cfg)

    recorded = read_record(stage.path)  # the reader the later stages use
    assert recorded.labels.tolist() == [1 if row["label"] == "mem" else 0 for row in rows]
    assert recorded.pair_ids.tolist() == [row["pair_id"] for row in rows]
    assert recorded.model["model_type"] == "gpt2"
    for kind in ("resid", "mlp", "attn"):
        array = recorded.activations(kind)
        assert array.shape == (6, 2, site_width(model, kind))  # type: ignore[arg-type]
        np.testing.assert_allclose(
            array, _one_by_one(model, tokenizer, prompts, kind), rtol=1e-4, atol=1e-5
        )
    # The answer readout at the last layer is the model's own white-minus-brown logit.
    margins = recorded.answer_margins()
    assert margins is not None and margins.shape == (6, 2)
    white, brown = tokenizer.convert_tokens_to_ids(["white", "brown"])
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([encode_prompt(tokenizer, prompt, chat=False)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        assert margins[row, -1] == pytest.approx((logits[white] - logits[brown]).item(), abs=1e-4)
    manifest = stage.manifest()
    assert set(manifest["inputs"]) == {"train", "behave"}
    assert {"resid.npy", "mlp.npy", "attn.npy", "index.json", "answer_margin.npy"} <= set(
        manifest["outputs"]
    )

    # Same config and inputs: skipped; another site list: redone.
    stamp = stage.manifest_path.stat().st_mtime_ns
    run_stage("record", run, cfg)
    assert stage.manifest_path.stat().st_mtime_ns == stamp
    fewer = load_config(None, ["device=cpu", "record.sites=[resid]"])
    assert list(read_record(run_stage("record", run, fewer).path).sites) == ["resid"]


def test_the_gradient_pass_batches_on_its_own_and_gives_the_same_gradients(
    tmp_path: Path, tiny_gpt2_with_tokenizer: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backward pass is batched by record.gradient_batch_size, not record.batch_size
    # (a backward keeps every layer's activations: 256 prompts outgrow 24 GB on SmolLM2).
    model, tokenizer = tiny_gpt2_with_tokenizer
    run, _ = _run_folder(tmp_path, model, tokenizer, _prompts(6))
    sizes_used: list[int] = []

    def counted(*args: Any, batch_size: int, **kwargs: Any) -> None:
        sizes_used.append(batch_size)
        margin_gradients(*args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr("memgen.record.stage.margin_gradients", counted)
    grads = []
    for size in (1, 4):
        overrides = ["device=cpu", "record.batch_size=6", f"record.gradient_batch_size={size}"]
        cfg = load_config(None, overrides)
        grads.append(read_record(run_stage("record", run, cfg).path).margin_gradients("mlp"))
    assert sizes_used == [1, 4]
    assert grads[0].shape == (6, 2, site_width(model, "mlp")) and np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_record_stage_needs_finished_inputs(tmp_path: Path) -> None:
    cfg = load_config(None, ["device=cpu"])
    with pytest.raises(MemgenError, match="memgen train"):
        run_stage("record", tmp_path / "empty", cfg)


def test_read_pairs_rejects_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    with pytest.raises(MemgenError, match="memgen behave"):
        read_pairs(path)
    path.write_text(json.dumps({"pair_id": 0, "prompt": "p", "label": "mem"}) + "\n")
    assert read_pairs(path).answers is None  # no answers: the readout is skipped
    path.write_text(json.dumps({"pair_id": 0, "prompt": "p", "label": "other"}) + "\n")
    with pytest.raises(MemgenError, match=r"pairs.jsonl:1: label 'other'"):
        read_pairs(path)
    path.write_text(json.dumps({"pair_id": 0, "label": "mem"}) + "\n")
    with pytest.raises(MemgenError, match="not a pair row"):
        read_pairs(path)
    path.write_text("")
    with pytest.raises(MemgenError, match="no pairs"):
        read_pairs(path)
