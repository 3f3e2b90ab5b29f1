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

On SmolLM2-135M and one thread the stage takes about an hour: the planting, each
selector's scores and each row are kept in `localize/pieces/` as they finish, so a
stopped stage resumes where it stopped, to the same numbers.
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
from memgen.core.pieces import Pieces
from memgen.core.progress import progress
from memgen.core.rows import LocalizationRow, dump_rows, with_holm
from memgen.core.sites import n_layers, site_width
from memgen.localize.plant import (
    Neurons,
    Planting,
    make_facts,
    plant,
    random_neurons,
)
from memgen.localize.selectors import SELECTORS, usual_values
from memgen.localize.test import Deleter, localize

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
    pieces: Pieces,
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
    planting = _plant_once(model, tokenizer, facts, replay, planted, cfg, pieces)
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


def _plant_once(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: list[Example],
    replay: list[Example],
    planted: Neurons,
    cfg: RunConfig,
    pieces: Pieces,
) -> Planting:
    """Plant, going on from a stopped run's last progress. `plant` saves it every 10 steps
    and at its last step, so a finished planting is put back bit for bit, without a step."""
    lc = cfg.localize
    return plant(
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
        resume=pieces.saved_arrays("planting"),
        save=lambda so_far: pieces.save_arrays("planting", so_far),
    )


def _localizations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    garden: _Garden,
    cfg: RunConfig,
    pieces: Pieces,
) -> tuple[list[LocalizationRow], Deleter]:
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

    def row(name: str, scores: np.ndarray, k: int) -> LocalizationRow:
        def measure() -> list[LocalizationRow]:
            return [localize(name, scores, k, deleter, planted, lc.draws, controls)]

        return pieces.get(f"{name}-{k}", LocalizationRow, measure)[0]

    def score(name: str) -> np.ndarray:
        def measure() -> dict[str, np.ndarray]:
            selector = SELECTORS.get(name)
            return {"scores": selector(model, tokenizer, garden.facts, usual, chat, selectors)}

        return pieces.arrays(f"scores-{name}", measure)["scores"]

    rows = [row("planted", oracle, len(planted))]
    for name in progress(lc.selectors, "localize: selectors"):
        scores = score(name)
        rows += [row(name, scores, max(1, round(size * depth * width))) for size in lc.sizes]
    return with_holm(rows, "p_value", "p_value_net"), deleter


def run_localize(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    model, tokenizer = load_run_model(step.inputs["train"].path, cfg.train, cfg.device)
    if isinstance(model, PeftModel):  # planting changes base rows: fold the adapter in
        model = model.merge_and_unload()
    out = stage.begin()
    pieces = Pieces(out / "pieces", step)
    examples = read_split(step.inputs["data"].path, "train")
    garden = _plant_facts(model, tokenizer, examples, cfg, pieces)
    rows, deleter = _localizations(model, tokenizer, garden, cfg, pieces)
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
        "rows": dump_rows(rows),
    }
    write_json(out / "localize.json", result)
    pieces.clear()
    step.finish(result)
    log.info("%s", format_localization(rows))


def _indicator(planted: Neurons, depth: int, width: int) -> np.ndarray:
    """Scores that rank exactly the planted neurons first: the oracle selection."""
    scores = np.zeros((depth, width))
    scores[planted.layers, planted.indices] = 1.0
    return scores


def format_localization(rows: list[LocalizationRow]) -> str:
    """The rows as a plain-text table; random columns are mean [min, max] over the draws,
    p-values are plain (Holm-adjusted)."""
    lines = [
        "selector        k  recall@k  facts kept  ordinary kept  "
        "random facts kept  random ordinary kept              p          p net"
    ]
    for row in rows:
        recall = "-" if row.recall_at_k is None else f"{row.recall_at_k:.2f}"
        kept = row.deletion
        lines.append(
            f"{row.selector:12} {row.k:4d}  {recall:>8}  {kept.facts_recalled:10.2f}  "
            f"{kept.ordinary_kept:13.2f}  {_spread(row.random_recalled):>17}  "
            f"{_spread(row.random_ordinary_kept):>20}  "
            f"{row.p_value:.3f} ({row.p_value_holm:.3f})  "
            f"{row.p_value_net:.3f} ({row.p_value_net_holm:.3f})"
        )
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    chance = np.asarray(values)
    return f"{chance.mean():.2f} [{chance.min():.2f}, {chance.max():.2f}]"
