"""Stage `localize`: a positive control for neuron localization, on the run's model.

    memgen localize --run-dir runs/cipher-contest
    memgen localize --run-dir runs/cipher-contest localize.fraction=0.005 localize.draws=50

Plants new facts in a random `localize.fraction` of the MLP neurons of every layer
(`memgen.localize.plant`), then asks each selector to find them: its recall of the
planted neurons, and what deleting its top k does to the facts and to ordinary answers,
placed among `draws` random selections of the same per-layer counts
(`memgen.localize.test`). The planted set itself is deleted too: if that does not
forget the facts beyond chance, the deletion test has no power and nothing it says
about a selector means anything. Writes `localize/localize.json`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.answers import greedy_writes
from memgen.core.artifacts import Step, write_json
from memgen.core.config import RunConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import Example, read_split
from memgen.core.modeling import load_run_model
from memgen.core.progress import progress
from memgen.core.sites import n_layers, site_width
from memgen.localize.plant import (
    Neurons,
    Planting,
    make_facts,
    plant,
    random_neurons,
)
from memgen.localize.selectors import SELECTORS, usual_values
from memgen.localize.test import Deleter, Localization, localize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Garden:
    """The planted memories: the facts recalled after planting, the neurons they live in,
    and the training prompts kept out of planting (what the model knew before)."""

    facts: list[Example]
    ordinary: list[Example]
    replay: list[Example]
    planted: Neurons
    per_layer: int
    planting: Planting


def _plant_facts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    cfg: RunConfig,
) -> _Garden:
    """Teach `localize.n_facts` new facts through a random `localize.fraction` of the MLP
    neurons of every layer; refuse if too few are recalled to test anything on."""
    lc = cfg.localize
    facts = make_facts(examples, lc.n_facts, cfg.seed)
    fact_prompts = {ex.prompt for ex in facts}
    rest = [ex for ex in examples if ex.prompt not in fact_prompts]
    ordinary, replay = rest[: lc.n_ordinary], rest[lc.n_ordinary :]
    depth, width = n_layers(model), site_width(model, "mlp")
    per_layer = max(1, round(lc.fraction * width))
    planted = random_neurons([per_layer] * depth, width, np.random.default_rng(cfg.seed))
    planting = plant(
        model,
        tokenizer,
        facts,
        replay,
        planted,
        steps=lc.steps,
        lr=lc.lr,
        batch_size=lc.batch_size,
        chat=cfg.train.chat,
        seed=cfg.seed,
    )
    log.info(
        "localize: %d facts in %d MLP neurons (%d per layer), %.0f%% recalled after %d steps",
        len(facts),
        len(planted),
        per_layer,
        100 * planting.recall,
        planting.steps,
    )
    if planting.recall < lc.target:
        raise MemgenError(
            f"localize: only {planting.recall:.0%} of the planted facts are recalled after "
            f"{planting.steps} steps (target {lc.target:.0%}); raise localize.steps or "
            "localize.lr, or plant fewer facts (localize.n_facts)"
        )
    # The planted memories are the facts planting made: the tests ask about those only.
    hits = greedy_writes(model, tokenizer, facts, cfg.train.chat)
    kept = [fact for fact, hit in zip(facts, hits, strict=True) if hit]
    return _Garden(kept, ordinary, replay, planted, per_layer, planting)


def _localizations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, garden: _Garden, cfg: RunConfig
) -> tuple[list[Localization], Deleter]:
    """The planted set itself (the test's power), then each selector at each size."""
    lc, chat, planted = cfg.localize, cfg.train.chat, garden.planted
    depth, width = n_layers(model), site_width(model, "mlp")
    usual = usual_values(model, tokenizer, garden.replay[: lc.n_reference], chat)  # once
    deleter = Deleter(model, tokenizer, garden.facts, garden.ordinary, usual.mean, chat)
    oracle = _indicator(planted, depth, width)
    # Planting drew the planted set from `cfg.seed`: the random sets and the `random`
    # selector draw from other seeds, or the planted row's first random set is the planted
    # set itself (it was until 2026-12-05: the planted row's p stopped at 2 / 21).
    controls, selectors = cfg.seed + 1, cfg.seed + 2
    rows = [localize("planted", oracle, len(planted), deleter, planted, lc.draws, controls)]
    for name in progress(lc.selectors, "localize: selectors"):
        scores = SELECTORS.get(name)(model, tokenizer, garden.facts, usual, chat, selectors)
        for size in lc.sizes:
            k = max(1, round(size * depth * width))
            rows.append(localize(name, scores, k, deleter, planted, lc.draws, controls))
    return rows, deleter


def run_localize(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    model, tokenizer = load_run_model(step.inputs["train"].path, cfg.train, cfg.device)
    if isinstance(model, PeftModel):  # planting changes base rows: fold the adapter in
        model = model.merge_and_unload()
    garden = _plant_facts(model, tokenizer, read_split(step.inputs["data"].path, "train"), cfg)
    out = stage.begin()
    rows, deleter = _localizations(model, tokenizer, garden, cfg)
    planted = garden.planted
    result = {
        "planted": {
            "n_neurons": len(planted),
            "per_layer": garden.per_layer,
            "fraction": cfg.localize.fraction,
            "n_facts": cfg.localize.n_facts,
            "n_recalled": len(garden.facts),
            "steps": garden.planting.steps,
            "recall": garden.planting.recall,
            "layers": planted.layers.tolist(),
            "neurons": planted.indices.tolist(),
        },
        "ordinary_prompts": len(deleter.ordinary),
        "rows": [row.to_dict() for row in rows],
    }
    write_json(out / "localize.json", result)
    step.finish(result)
    log.info("%s", format_localization(rows))


def _indicator(planted: Neurons, depth: int, width: int) -> np.ndarray:
    """Scores that rank exactly the planted neurons first: the oracle selection."""
    scores = np.zeros((depth, width))
    scores[planted.layers, planted.indices] = 1.0
    return scores


def format_localization(rows: list[Localization]) -> str:
    """The rows as a plain-text table; random columns are mean [min, max] over the draws."""
    lines = [
        "selector        k  recall@k  facts kept  ordinary kept  "
        "random facts kept  random ordinary kept      p  p net"
    ]
    for row in rows:
        recall = "-" if row.recall_at_k is None else f"{row.recall_at_k:.2f}"
        kept = row.deletion
        lines.append(
            f"{row.selector:12} {row.k:4d}  {recall:>8}  {kept.facts_recalled:10.2f}  "
            f"{kept.ordinary_kept:13.2f}  {_spread(row.random_recalled):>17}  "
            f"{_spread(row.random_ordinary_kept):>20}  {row.p_value:.3f}  {row.p_value_net:.3f}"
        )
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    chance = np.asarray(values)
    return f"{chance.mean():.2f} [{chance.min():.2f}, {chance.max():.2f}]"
