# As run on 2026-12-05 at 8b485fe (python THIS /tmp/runs/smol-v5-s0-loc, two threads,
# alone): docs/log/localization.md, "The planted control on SmolLM2-135M".
"""Exploratory, seed 0 only: which selector finds planted neurons on SmolLM2 (recall only)."""
import sys, time, json
import numpy as np, torch
from pathlib import Path
from memgen.core.config import load_config
from memgen.core.examples import read_split
from memgen.core.modeling import load_run_model
from memgen.core.sites import n_layers, site_width
from memgen.localize.stage import _plant_facts
from memgen.localize.selectors import SELECTORS, usual_values, attribution_scores
from memgen.localize.test import top_k, recall_at_k

run = Path(sys.argv[1])
cfg = load_config(run / "config.yaml", ["localize.n_ordinary=100"])
model, tok = load_run_model(run / "train", cfg.train, "cpu")
model = model.merge_and_unload()
t = time.time()
garden = _plant_facts(model, tok, read_split(run / "data", "train"), cfg)
print("planted", garden.planting, time.time() - t, flush=True)
chat = cfg.train.chat
usual = usual_values(model, tok, garden.replay[:256], chat)
depth, width = n_layers(model), site_width(model, "mlp")
k = 461
planted = garden.planted
a_f = attribution_scores(model, tok, garden.facts, usual, chat)
a_r = attribution_scores(model, tok, garden.replay[:256], usual, chat)
np.savez("/tmp/exp/scores_s%d.npz" % cfg.seed, a_f=a_f, a_r=a_r, mean=usual.mean, sd=usual.sd,
         layers=planted.layers, idx=planted.indices)
def rec(s): return recall_at_k(top_k(s, k), planted, width)
variants = {
    "attribution": a_f,
    "contrast": a_f - a_r,
    "abs_ratio": np.abs(a_f) / (np.abs(a_r) + np.median(np.abs(a_r))),
    "ratio": a_f / (np.abs(a_r) + np.median(np.abs(a_r))),
    "abs_attr": np.abs(a_f),
}
for name, s in variants.items():
    sel = top_k(s, k)
    print(name, "recall@461 %.3f" % rec(s), "layers", np.bincount(sel.layers, minlength=depth).tolist(), flush=True)
top = top_k(a_f, 10)
print("attribution top10", list(zip(top.layers.tolist(), top.indices.tolist())), a_f[top.layers, top.indices].round(2).tolist(), a_r[top.layers, top.indices].round(2).tolist())
pl = a_f[planted.layers, planted.indices]
print("planted a_f quantiles", np.quantile(pl, [0.1, 0.5, 0.9]).round(4), "all a_f quantiles", np.quantile(a_f, [0.5, 0.99, 0.999]).round(4))
