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
from pathlib import Path

import numpy as np
from peft import PeftModel

from memgen.core.artifacts import Stage, write_json
from memgen.core.config import RunConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import read_split
from memgen.core.modeling import load_run_model
from memgen.core.sites import n_layers, site_width
from memgen.localize.plant import Neurons, make_facts, plant, random_neurons, recalled
from memgen.localize.selectors import SELECTORS, usual_values
from memgen.localize.test import Deleter, Localization, localize
from memgen.pipeline import open_step

log = logging.getLogger(__name__)


def run_localize(run_dir: Path, cfg: RunConfig, force: bool = False) -> Stage:
    step = open_step(run_dir, "localize", cfg, force)
    if step is None:
        return Stage(run_dir, "localize")
    cfg, stage = step.cfg, step.stage
    lc, chat = cfg.localize, cfg.train.chat
    data, train = step.inputs["data"], step.inputs["train"]
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    if isinstance(model, PeftModel):  # planting changes base rows: fold the adapter in
        model = model.merge_and_unload()
    examples = read_split(data.path, "train")
    facts = make_facts(examples, lc.n_facts, cfg.seed)
    fact_prompts = {ex.prompt for ex in facts}
    rest = [ex for ex in examples if ex.prompt not in fact_prompts]
    # Training prompts kept out of planting measure the collateral: what the model knew.
    ordinary, replay = rest[: lc.n_ordinary], rest[lc.n_ordinary :]
    depth, width = n_layers(model), site_width(model, "mlp")
    per_layer = max(1, round(lc.fraction * width))
    planted = random_neurons([per_layer] * depth, width, np.random.default_rng(cfg.seed))
    planting = plant(model, tokenizer, facts, replay, planted, steps=lc.steps, lr=lc.lr,
                     batch_size=lc.batch_size, chat=chat,
                     seed=cfg.seed)  # fmt: skip
    log.info("localize: %d facts in %d MLP neurons (%d per layer), %.0f%% recalled after %d "
             "steps", len(facts), len(planted), per_layer, 100 * planting.recall,
             planting.steps)  # fmt: skip
    if planting.recall < lc.target:
        raise MemgenError(
            f"localize: only {planting.recall:.0%} of the planted facts are recalled after "
            f"{planting.steps} steps (target {lc.target:.0%}); raise localize.steps or "
            "localize.lr, or plant fewer facts (localize.n_facts)"
        )
    # The planted memories are the facts planting made: the tests ask about those only.
    facts = [
        f for f, hit in zip(facts, recalled(model, tokenizer, facts, chat), strict=True) if hit
    ]
    reference = replay[: lc.n_reference]
    usual = usual_values(model, tokenizer, reference, chat)  # once: every selector's baseline
    deleter = Deleter(model, tokenizer, facts, ordinary, usual.mean, chat)
    out = stage.begin()
    rows = [localize("planted", _indicator(planted, depth, width), len(planted), deleter,
                     planted, lc.draws, cfg.seed)]  # fmt: skip
    for name in lc.selectors:
        scores = SELECTORS.get(name)(model, tokenizer, facts, usual, chat, cfg.seed)
        for size in lc.sizes:
            k = max(1, round(size * depth * width))
            rows.append(localize(name, scores, k, deleter, planted, lc.draws, cfg.seed + 1))
    result = {
        "planted": {"n_neurons": len(planted), "per_layer": per_layer, "fraction": lc.fraction,
                    "n_facts": lc.n_facts, "n_recalled": len(facts), "steps": planting.steps,
                    "recall": planting.recall,
                    "layers": planted.layers.tolist(), "neurons": planted.indices.tolist()},
        "ordinary_prompts": len(deleter.ordinary),
        "rows": [row.to_dict() for row in rows],
    }  # fmt: skip
    write_json(out / "localize.json", result)
    step.finish(result)
    log.info("%s", format_localization(rows))
    return stage


def _indicator(planted: Neurons, depth: int, width: int) -> np.ndarray:
    """Scores that rank exactly the planted neurons first: the oracle selection."""
    scores = np.zeros((depth, width))
    scores[planted.layers, planted.indices] = 1.0
    return scores


def format_localization(rows: list[Localization]) -> str:
    lines = ["selector        k  recall@k  facts kept  ordinary kept  random facts kept  p"]
    for row in rows:
        recall = "-" if row.recall_at_k is None else f"{row.recall_at_k:.2f}"
        chance = np.asarray(row.random_recalled)
        spread = f"{chance.mean():.2f} [{chance.min():.2f}, {chance.max():.2f}]"
        kept = row.deletion
        lines.append(
            f"{row.selector:12} {row.k:4d}  {recall:>8}  {kept.facts_recalled:10.2f}  "
            f"{kept.ordinary_kept:13.2f}  {spread:>17}  {row.p_value:.3f}"
        )
    return "\n".join(lines)
