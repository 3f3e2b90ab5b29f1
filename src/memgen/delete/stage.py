"""Stage `delete`: are the neurons a scorer selects on the flipped pairs where memory lives?

    memgen delete --run-dir runs/cipher-contest
    memgen delete --run-dir runs/cipher-contest 'delete.scorers=[attribution]' delete.draws=50

Each scorer (`delete.scorers`: `attribution`, or any registry scorer such as the paper's
`pearson`) ranks the MLP neurons on the recorded flipped pairs; its top `delete.sizes`
(shares of all MLP neurons) are deleted, set to their mean over training prompts (or to
zero) at every position, and the held-out test prompts answered again
(`memgen.delete.measure`). Beside it, `delete.draws` random sets with the same count per
layer get the same deletion; the rank p-value places the selection among them. With
`delete.matrix`, each memory (a trigger's memorized answer) gets neurons chosen on its own
pairs alone, and every memory is measured: a memory x memory matrix whose diagonal says
whether a memory's neurons are its own. Writes `delete/delete.json` and `delete.png`
(memory and rule answers kept over set size, beside the random sets' band).

Each scorer and size (and each matrix) is saved to `delete/pieces/` as it finishes: a
killed stage, run again with the same config, measures only what it had not finished
(a row on SmolLM2-135M takes ~20 min on one core).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.artifacts import Step, write_json
from memgen.core.config import DeleteConfig, RunConfig
from memgen.core.examples import PAIRS_FILE, PairRows, read_pairs, read_split, read_test_answers
from memgen.core.modeling import load_run_model
from memgen.core.pieces import Pieces
from memgen.core.progress import progress
from memgen.core.recorded import CAUSAL_FIX, Recorded, read_record
from memgen.core.rows import DeletionRow, MemoryMatrix, Spread, dump_rows, with_holm
from memgen.core.sites import n_layers, site_width, write_norms
from memgen.core.stats import SHARE, rank_p_value, summarise, wilson
from memgen.delete.figures import plot_deletion
from memgen.delete.matrix import Memory, memory_matrix, memory_rows
from memgen.delete.measure import DeletionBench, HeldOut
from memgen.localize.plant import Neurons, random_neurons, spread_matched
from memgen.localize.selectors import usual_values
from memgen.neurons.attribution import site_score
from memgen.neurons.selection import select_top

log = logging.getLogger(__name__)


def deletion_row(
    bench: DeletionBench,
    scorer: str,
    ablation: str,
    size: float,
    top: Neurons,
    randoms: list[Neurons],
    control: Literal["layer", "spread"] = "layer",
) -> DeletionRow:
    deleted = bench(top, ablation)
    chance = [bench(neurons, ablation) for neurons in randoms]
    held = bench.held
    kept = [d.mem_kept for d in chance]
    log.info(
        "delete: %s top %d (%g), %s: memory kept %.3f (random %.3f), rule kept %.3f",
        scorer,
        len(top),
        size,
        ablation,
        deleted.mem_kept,
        float(np.mean(kept)),
        deleted.gen_kept,
    )
    return DeletionRow(
        scorer=scorer,
        ablation=ablation,  # type: ignore[arg-type]
        size=size,
        k=len(top),
        per_layer=top.per_layer(n_layers(bench.model)).tolist(),
        n_mem=len(held.mem),
        n_gen=len(held.gen),
        n_train=len(held.train),
        deleted=deleted,
        mem_kept_ci=list(wilson(round(deleted.mem_kept * len(held.mem)), len(held.mem))),
        random=chance,
        control=control,
        random_mem_kept=Spread(**summarise(kept, SHARE)),
        # Forgetting is the effect: less memory kept is more extreme; net of collateral,
        # the rule answers kept minus the memorized ones kept.
        p_value=rank_p_value(-deleted.mem_kept, [-k for k in kept]),
        p_value_net=rank_p_value(deleted.net, [d.net for d in chance]),
        p_value_rule=rank_p_value(-deleted.gen_kept, [-d.gen_kept for d in chance]),
        p_value_holm=1.0,  # set over all the stage's rows, by `with_holm`
    )


def _rows(
    bench: DeletionBench, recorded: Recorded, dc: DeleteConfig, seed: int, pieces: Pieces
) -> list[DeletionRow]:
    """Per scorer and size, its top set and `draws` random sets (the same draws for every
    ablation, so the ablations are compared on one footing). Each cell is saved as it
    finishes; a resumed stage still draws every cell's random sets, so the draws of the
    cells it measures are those of an uninterrupted run."""
    rng = np.random.default_rng(seed)
    depth, width = n_layers(bench.model), site_width(bench.model, "mlp")
    rows = []
    cells = [(scorer, size) for scorer in dc.scorers for size in dc.sizes]
    for scorer, size in progress(cells, "delete"):
        score = site_score(scorer, recorded, "mlp")
        top = Neurons(*select_top(score, size))
        randoms = [
            random_neurons(top.per_layer(depth), width, rng)
            if dc.control == "layer"
            else spread_matched(top, bench.spread, rng, dc.spread_window)
            for _ in range(dc.draws)
        ]
        measure = partial(_cell, bench, scorer, dc, size, top, randoms)
        rows += pieces.get(f"rows-{scorer}-{size:g}", DeletionRow, measure)
    return rows


def _cell(
    bench: DeletionBench,
    scorer: str,
    dc: DeleteConfig,
    size: float,
    top: Neurons,
    randoms: list[Neurons],
) -> list[DeletionRow]:
    return [deletion_row(bench, scorer, a, size, top, randoms, dc.control) for a in dc.ablations]


def _matrix(
    bench: DeletionBench,
    recorded: Recorded,
    memories: Sequence[Memory],
    scorer: str,
    ablation: str,
    dc: DeleteConfig,
    seed: int,
) -> list[MemoryMatrix]:
    return [memory_matrix(bench, recorded, memories, scorer, ablation, dc.matrix_size, seed)]


def _matrices(
    bench: DeletionBench,
    recorded: Recorded,
    pairs: PairRows,
    dc: DeleteConfig,
    seed: int,
    pieces: Pieces,
) -> list[MemoryMatrix]:
    memories = memory_rows(pairs, bench.held, dc.min_pairs)
    # The record's own maps are one score over all its pairs: no per-memory subset.
    per_memory = [scorer for scorer in dc.scorers if scorer not in CAUSAL_FIX]
    matrices = []
    for scorer in per_memory:
        for ablation in dc.ablations:
            measure = partial(_matrix, bench, recorded, memories, scorer, ablation, dc, seed)
            matrices += pieces.get(f"matrix-{scorer}-{ablation}", MemoryMatrix, measure)
    return matrices


def _bench(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, step: Step, pairs: set[str]
) -> DeletionBench:
    cfg: RunConfig = step.cfg
    dc, chat = cfg.delete, cfg.train.chat
    train = read_split(step.inputs["data"].path, "train")
    reference, measured = train[: dc.n_reference], train[dc.n_reference :][: dc.n_train]
    answers = read_test_answers(step.inputs["behave"].path)
    held = HeldOut.build(model, tokenizer, answers, pairs, measured, chat, dc.n_prompts)
    usual = usual_values(model, tokenizer, reference, chat)
    values = {"mean": usual.mean, "zero": np.zeros_like(usual.mean)}
    spread = usual.sd * write_norms(model, "mlp")
    return DeletionBench(model, tokenizer, held, values, chat, spread)


def run_delete(step: Step) -> None:
    cfg = step.cfg
    dc = cfg.delete
    model, tokenizer = load_run_model(step.inputs["train"].path, cfg.train, cfg.device)
    recorded = read_record(step.inputs["record"].path)
    pairs = read_pairs(step.inputs["behave"].path / PAIRS_FILE)
    bench = _bench(model, tokenizer, step, set(pairs.prompts))
    out = step.stage.begin()
    pieces = Pieces(out / "pieces", step)
    rows = with_holm(_rows(bench, recorded, dc, cfg.seed, pieces))
    matrices = _matrices(bench, recorded, pairs, dc, cfg.seed, pieces) if dc.matrix else []
    result = {
        "held_out": {
            "mem": len(bench.held.mem),
            "gen": len(bench.held.gen),
            "train": len(bench.held.train),
        },
        "rows": dump_rows(rows),
        "matrices": dump_rows(matrices),
    }
    write_json(out / "delete.json", result)
    plot_deletion(rows, out / "delete.png")
    pieces.clear()
    step.finish(result)
    log.info("%s", format_deletion(rows))


def format_deletion(rows: Sequence[DeletionRow]) -> str:
    lines = ["scorer        ablation     k  memory kept  to rule  rule kept  random memory kept  p"]
    for r in rows:
        chance = r.random_mem_kept
        spread = f"{chance.mean:.2f} [{chance.min:.2f}, {chance.max:.2f}]"
        lines.append(
            f"{r.scorer:12}  {r.ablation:8} {r.k:5d}  {r.deleted.mem_kept:11.2f}  "
            f"{r.deleted.to_rule:7.2f}  {r.deleted.gen_kept:9.2f}  {spread:>18}  {r.p_value:.3f}"
        )
    return "\n".join(lines)
