"""The localization positive control: facts planted in known MLP neurons, found and deleted."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TINY_CIPHER
from memgen.core.answers import greedy_writes
from memgen.core.config import load_config
from memgen.core.examples import Example, read_split
from memgen.core.modeling import load_run_model
from memgen.core.sites import n_layers, site_width, write_norms
from memgen.localize import plant as plant_module
from memgen.localize import stage as stage_module
from memgen.localize.plant import (
    Neurons,
    make_facts,
    neuron_masks,
    plant,
    random_neurons,
    spread_matched,
)
from memgen.localize.test import recall_at_k, top_k
from memgen.pipeline import run_stage
from memgen.report.html import _localization_table

TINY = [
    *TINY_CIPHER, "localize.lr=0.03", "localize.n_facts=8", "localize.fraction=0.02",
    "localize.sizes=[0.01]", "localize.n_ordinary=200",
    "localize.selectors=[attribution,hardconcrete,activation,nmd,random]",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_cipher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared tiny run: the localize stage writes into it."""
    run_dir = tmp_path_factory.mktemp("localize") / "run"
    shutil.copytree(tiny_cipher_run, run_dir)
    return run_dir


def test_planting_moves_only_the_planted_neurons_rows(trained: Path) -> None:
    cfg = load_config(None, TINY)
    model, tokenizer = load_run_model(trained / "train", cfg.train, "cpu")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    examples = read_split(trained / "data", "train")
    facts = make_facts(examples, 8, seed=0)
    assert not greedy_writes(model, tokenizer, facts, chat=False).any()  # new to the model
    depth, width = n_layers(model), site_width(model, "mlp")
    planted = random_neurons([5] * depth, width, np.random.default_rng(0))
    done = plant(model, tokenizer, facts, examples[100:], planted, steps=300, lr=0.03,
                 batch_size=32, chat=False, seed=0)  # fmt: skip
    assert done.recall >= 0.9 and greedy_writes(model, tokenizer, facts, chat=False).mean() >= 0.9
    masks = neuron_masks(model, planted)
    assert len(masks) == 3 * depth  # c_fc weight and bias, c_proj weight, per layer
    for name, param in model.named_parameters():
        moved = param.detach() != before[name]
        allowed = masks.get(name, torch.zeros_like(param)).bool()
        assert not (moved & ~allowed).any(), name  # nothing outside the planted rows moved
    assert all((model.get_parameter(n) != before[n]).any() for n in masks)


def test_a_stopped_planting_resumes_to_the_same_weights(trained: Path) -> None:
    cfg = load_config(None, TINY)
    examples = read_split(trained / "data", "train")
    facts = make_facts(examples, 8, seed=0)

    def planting(**how: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        model, tokenizer = load_run_model(trained / "train", cfg.train, "cpu")
        planted = random_neurons([5] * n_layers(model), site_width(model, "mlp"),
                                 np.random.default_rng(0))  # fmt: skip
        done = plant(model, tokenizer, facts, examples[100:], planted, steps=40, lr=0.01,
                     batch_size=32, chat=False, seed=0, **how)  # fmt: skip
        return done, {name: p.detach().clone() for name, p in model.named_parameters()}

    whole, weights = planting()
    assert whole.steps > 20  # slow enough to be stopped on the way
    saved: list[dict[str, np.ndarray]] = []

    def keep_then_stop(progress: dict[str, np.ndarray]) -> None:
        saved.append(progress)
        if len(saved) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        planting(save=keep_then_stop)
    assert int(saved[-1]["step"][0]) == 20
    resumed, resumed_weights = planting(resume=saved[-1])
    assert resumed == whole
    assert all(torch.equal(resumed_weights[name], weights[name]) for name in weights)


def test_attribution_finds_planted_neurons_and_deleting_them_forgets_the_facts(
    trained: Path,
) -> None:
    cfg = load_config(None, TINY)
    run_stage("localize", trained, cfg)
    result = json.loads((trained / "localize" / "localize.json").read_text())
    rows = {row["selector"]: row for row in result["rows"]}
    assert result["planted"]["recall"] >= 0.9 and result["planted"]["n_neurons"] == 10
    # The test has power: deleting the planted neurons forgets the facts, keeps the rest.
    oracle = rows["planted"]
    assert oracle["deletion"]["facts_recalled"] <= 0.1
    assert oracle["deletion"]["ordinary_kept"] >= 0.85
    floor = 1 / (1 + cfg.localize.draws) + 1e-9
    # Beyond every random set: none of them is the planted set drawn again.
    assert oracle["p_value"] <= floor and oracle["p_value_net"] <= floor
    # The causal selector finds them; random selections neither find nor delete them.
    for causal in ("attribution", "hardconcrete"):
        assert rows[causal]["recall_at_k"] >= 0.8, causal
        assert rows[causal]["p_value"] <= floor and rows[causal]["p_value_net"] <= floor
    assert rows["random"]["recall_at_k"] <= 0.2 and rows["random"]["p_value"] > 0.5
    # Holm over the stage's rows: never below the plain p; the smallest times the row count.
    assert all(r["p_value_holm"] >= r["p_value"] for r in rows.values())
    assert oracle["p_value_holm"] == pytest.approx(len(rows) * oracle["p_value"])
    assert oracle["p_value_net_holm"] == pytest.approx(len(rows) * oracle["p_value_net"])
    assert f"{oracle['p_value']:.3f} ({oracle['p_value_holm']:.3f})" in _localization_table(result)
    assert len(rows["attribution"]["random_recalled"]) == cfg.localize.draws
    assert len(rows["attribution"]["random_ordinary_kept"]) == cfg.localize.draws


def test_a_stopped_localize_resumes_where_it_stopped_to_the_same_numbers(
    tiny_cipher_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(None, [*TINY, "localize.selectors=[attribution,random]"])
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    for run_dir in (whole, stopped):
        shutil.copytree(tiny_cipher_run, run_dir)
    run_stage("localize", whole, cfg)

    measure_row, rows_measured = stage_module.localize, []

    def stopped_at_the_third_row(*args: Any, **kwargs: Any) -> Any:
        if len(rows_measured) == 2:
            raise KeyboardInterrupt
        rows_measured.append(args[0])
        return measure_row(*args, **kwargs)

    monkeypatch.setattr(stage_module, "localize", stopped_at_the_third_row)
    with pytest.raises(KeyboardInterrupt):
        run_stage("localize", stopped, cfg)
    out = stopped / "localize"
    assert not (out / "manifest.json").exists() and not (out / "localize.json").exists()
    kept = {path.name for path in (out / "pieces").iterdir()}
    assert {"planting.safetensors", "scores-attribution.safetensors"} <= kept
    assert len([name for name in kept if name.endswith(".json")]) == 2  # planted, attribution

    # Resumed: nothing planted or measured twice, and the numbers of the unstopped run.
    monkeypatch.setattr(stage_module, "localize", measure_row)
    # Not one planting step: the finished planting is put back from its saved progress.
    monkeypatch.setattr(plant_module, "answer_loss", lambda *a, **k: pytest.fail("planted again"))
    run_stage("localize", stopped, cfg)
    assert (out / "localize.json").read_text() == (whole / "localize" / "localize.json").read_text()
    assert not (out / "pieces").exists()


@dataclasses.dataclass(frozen=True)
class Garden:
    """A trained model with facts planted in known MLP neurons, and ordinary rule prompts."""

    model: Any
    tokenizer: Any
    facts: list[Example]
    rule: list[Example]
    planted: Neurons
    examples: list[Example]


@pytest.fixture(scope="module")
def garden(trained: Path) -> Garden:
    cfg = load_config(None, TINY)
    model, tokenizer = load_run_model(trained / "train", cfg.train, "cpu")
    examples = read_split(trained / "data", "train")
    depth, width = n_layers(model), site_width(model, "mlp")
    planted = random_neurons([5] * depth, width, np.random.default_rng(1))
    facts = make_facts(examples, 8, seed=1)
    plant(model, tokenizer, facts, examples[100:], planted, steps=300, lr=0.03,
          batch_size=32, chat=False, seed=1)  # fmt: skip

    def answered(group: list[Example]) -> list[Example]:
        hits = greedy_writes(model, tokenizer, group, False)
        return [ex for ex, hit in zip(group, hits, strict=True) if hit]

    rule = answered([ex for ex in examples[100:400] if ex.meta.get("kind") == "rule"])
    return Garden(model, tokenizer, answered(facts), rule, planted, examples)


def test_the_delete_stage_says_yes_where_a_memory_is_planted(garden: Garden) -> None:
    """The positive control of `memgen delete`: its row, given the planted neurons, must
    forget the planted facts beyond every matched random set, net of collateral too."""
    from memgen.delete.measure import DeletionBench, HeldOut
    from memgen.delete.stage import deletion_row
    from memgen.localize.selectors import usual_values

    model, tokenizer, facts = garden.model, garden.tokenizer, garden.facts
    as_rule = [dataclasses.replace(f, completion=f.gen_answer) for f in facts]
    held = HeldOut(facts, as_rule, garden.rule, garden.rule)
    usual = usual_values(model, tokenizer, garden.examples[400:656], False)
    spread = usual.sd * write_norms(model, "mlp")
    bench = DeletionBench(model, tokenizer, held, {"mean": usual.mean}, False, spread)
    depth, width = n_layers(model), site_width(model, "mlp")
    rng = np.random.default_rng(0)
    # Any neurons of the same layers, then ones as big as the planted (`delete.control`).
    for randoms in (
        [random_neurons([5] * depth, width, rng) for _ in range(19)],
        [spread_matched(garden.planted, spread, rng, 32) for _ in range(19)],
    ):
        row = deletion_row(bench, "planted", "mean", 0.02, garden.planted, randoms)
        assert len(facts) >= 6 and row.deleted.mem_kept <= 0.2
        assert row.p_value == row.p_value_net == pytest.approx(1 / 20)  # beats all 19 draws
        assert row.random_mem_kept.mean >= 0.5 and row.deleted.gen_kept >= 0.8


def test_spread_matched_sets_keep_the_layers_and_the_size_of_each_pick() -> None:
    rng = np.random.default_rng(0)
    spread = rng.uniform(0, 1, (3, 200))
    layers = np.array([0, 0, 2, 2, 2])
    top = Neurons(layers, np.argsort(-spread, axis=1)[layers, [0, 1, 0, 1, 2]])  # the biggest
    for _ in range(20):
        drawn = spread_matched(top, spread, rng, window=10)
        assert (drawn.layers == top.layers).all()
        assert len(set(zip(drawn.layers.tolist(), drawn.indices.tolist(), strict=True))) == 5
        ranks = np.argsort(np.argsort(-spread, axis=1), axis=1)[drawn.layers, drawn.indices]
        assert ranks.max() < 10  # drawn among the 10 biggest, where the picks are


@pytest.mark.parametrize("method", ["hardconcrete", "slimming"])
def test_a_learned_mask_finds_the_planted_neurons(garden: Garden, method: str) -> None:
    """The masks' positive control: trained to turn the facts to the rule while keeping the
    rule prompts, the mask's top 10 must be mostly the 10 planted neurons."""
    from memgen.core.forks import answer_forks
    from memgen.record.masks import learned_mask

    group = [*garden.facts, *garden.rule[:64]]  # forget the facts, keep the rule
    prompts = [ex.prompt for ex in group]
    forks = answer_forks(garden.tokenizer, [ex.gen_answer for ex in group],
                         [ex.mem_answer for ex in group])  # fmt: skip
    rc = load_config(None, TINY).record  # the defaults: steps, lr and penalty
    scores = learned_mask(garden.model, garden.tokenizer, prompts, forks,
                          method,  # type: ignore[arg-type]
                          steps=rc.mask_steps, lr=rc.mask_lr, penalty=rc.mask_penalty,
                          batch_size=32, chat=False, seed=0)  # fmt: skip
    found = top_k(scores, len(garden.planted))
    assert recall_at_k(found, garden.planted, scores.shape[1]) >= 0.5  # chance: 10 / 512
