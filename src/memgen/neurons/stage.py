"""Stage `neurons`: score every neuron at one site, select the top N%, check consistency.

    memgen neurons --run-dir runs/color                         # neurons.site=resid, pearson
    memgen neurons --run-dir runs/color neurons.scorer=auroc neurons.top_n=[0.01,0.05]

Reads `record/` and writes into `neurons/`:
- `scores.safetensors`: `nmd` and `score` maps [n_layers, width] (float32) of the site;
- `top5.json` + `top5.safetensors` (one neuron set per `neurons.top_n`, see neuron_set.py);
- `consistency.json`: split-half agreement of the selections against chance;
- `nmd_sorted.png`, `layer_share.png`, `score_by_layer.png`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from memgen.core.artifacts import Step, write_json
from memgen.core.config import RunConfig, set_name
from memgen.core.errors import MemgenError
from memgen.core.neuron_set import NeuronSet, write_scores
from memgen.core.recorded import Recorded, read_record
from memgen.neurons.attribution import site_score
from memgen.neurons.consistency import compare_scores, split_half_consistency
from memgen.neurons.figures import plot_layer_share, plot_nmd_heatmap, plot_score_by_layer
from memgen.neurons.scores import SCORERS, score
from memgen.neurons.selection import layer_share, select_top

log = logging.getLogger(__name__)

MIN_PAIRS = 4


def _rounded(values: np.ndarray, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]


def _consistency_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of consistency.json, for the manifest."""
    summary: dict[str, Any] = {
        "spearman": report["spearman"]["mean"],
        "spearman_permuted": report["spearman_permuted"]["mean"],
    }
    for row in report["top_n"]:
        summary[set_name(row["top_n"])] = {
            "jaccard": row["jaccard"]["mean"],
            "jaccard_ci": [row["jaccard"]["ci_low"], row["jaccard"]["ci_high"]],
            "jaccard_permuted": row["jaccard_permuted"]["mean"],
            "jaccard_chance": row["jaccard_chance"],
            "jaccard_chance_layers": row.get("jaccard_chance_layers"),
        }
    return summary


def _save_sets(
    out: Path, recorded: Recorded, main: np.ndarray, nmd: np.ndarray, cfg: RunConfig
) -> dict[str, np.ndarray]:
    """One neuron set per `neurons.top_n`, saved; where each one's neurons sit, by layer."""
    nc = cfg.neurons
    n_layers, width = main.shape
    shares: dict[str, np.ndarray] = {}
    meta = {"task": cfg.task, "n_pairs": recorded.n_pairs, "n_rows": len(recorded.labels)}
    for fraction in nc.top_n:
        layers, neurons = select_top(main, fraction)
        neuron_set = NeuronSet(
            model=recorded.model,
            site=nc.site,
            scorer=nc.scorer,
            top_n=fraction,
            n_layers=n_layers,
            width=width,
            layers=layers,
            neurons=neurons,
            nmd=nmd[layers, neurons],
            score=main[layers, neurons],
            meta=meta,
        )
        name = set_name(fraction)
        neuron_set.save(out / name)
        shares[name] = layer_share(layers, n_layers)
        log.info("neurons: %s = %d neurons at %s", name, len(neuron_set), nc.site)
    return shares


def _plot(
    out: Path, nmd: np.ndarray, main: np.ndarray, shares: dict[str, np.ndarray], cfg: RunConfig
) -> None:
    nc = cfg.neurons
    what = f"{cfg.task}, {nc.site}"
    plot_nmd_heatmap(nmd, out / "nmd_sorted.png", f"{what}: NMD per layer, sorted")
    plot_layer_share(shares, out / "layer_share.png", f"{what}: where the top-N neurons sit")
    plot_score_by_layer(
        main, out / "score_by_layer.png", f"{what}: |{nc.scorer}| per layer", nc.scorer
    )


def run_neurons(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    record = step.inputs["record"]
    nc = cfg.neurons
    SCORERS.get(nc.scorer)  # fail on a misspelt scorer before any work
    recorded = read_record(record.path)
    x = recorded.activations(nc.site)
    y = recorded.labels
    if recorded.n_pairs < MIN_PAIRS:
        raise MemgenError(
            f"neurons: found {recorded.n_pairs} flipped pairs, need at least {MIN_PAIRS}; "
            "mine more with a larger behave.target_flips"
        )
    out = stage.begin()

    nmd, in_sd = score("nmd", x, y), score("nmd_sd", x, y)
    main = nmd if nc.scorer == "nmd" else score(nc.scorer, x, y)
    maps = {"nmd": nmd, "nmd_sd": in_sd, "score": main}
    if recorded.gradients:  # the causal score beside the correlational one
        maps["attribution"] = site_score("attribution", recorded, nc.site)
    write_scores(out, maps, {"site": nc.site, "scorer": nc.scorer})

    shares = _save_sets(out, recorded, main, nmd, cfg)
    consistency = split_half_consistency(
        x, y, recorded.pair_ids, nc.scorer, nc.top_n, n_splits=nc.consistency_splits, seed=cfg.seed
    )
    write_json(out / "consistency.json", consistency)

    _plot(out, nmd, main, shares, cfg)

    summary = {
        "site": nc.site,
        "scorer": nc.scorer,
        "n_pairs": recorded.n_pairs,
        "mean_abs_nmd": _rounded(np.abs(nmd).mean(axis=1)),
        "mean_abs_nmd_sd": _rounded(np.abs(in_sd).mean(axis=1)),
        "layer_share": {name: _rounded(share, 4) for name, share in shares.items()},
        "consistency": _consistency_summary(consistency),
    }
    if "attribution" in maps:  # is the paper's selection the one the model depends on?
        summary["attribution_vs_score"] = {
            set_name(f): compare_scores(maps["attribution"], main, f) for f in nc.top_n
        }
    step.finish(summary)
    log.info("neurons: wrote %d neuron sets to %s", len(nc.top_n), out)
