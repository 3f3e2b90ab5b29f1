# As run on 2026-12-05 at 91ae3a0, where `attribution` was the margin log p(planted) -
# log p(rule) (reverted at the next commit); it also saved the planted MLP weights the
# next two scripts load. docs/log/localization.md, "The planted control on SmolLM2-135M".
"""Exploratory, seed 0 only: margin attribution on SmolLM2's planted control (recall)."""
import sys, time
import numpy as np, torch
from pathlib import Path
from safetensors.torch import save_file, load_file
from memgen.core.config import load_config
from memgen.core.examples import read_split
from memgen.core.modeling import load_run_model
from memgen.core.sites import n_layers, site_width
from memgen.localize.stage import _plant_facts
from memgen.localize.selectors import SELECTORS, usual_values
from memgen.localize.test import top_k, recall_at_k

run = Path(sys.argv[1])
cfg = load_config(run / "config.yaml", ["localize.n_ordinary=100"])
model, tok = load_run_model(run / "train", cfg.train, "cpu")
model = model.merge_and_unload()
garden = _plant_facts(model, tok, read_split(run / "data", "train"), cfg)
save_file({k: v.contiguous() for k, v in model.state_dict().items() if ".mlp." in k}, "/tmp/exp/planted_mlp_s%d.safetensors" % cfg.seed)
print("planted", garden.planting, len(garden.facts), flush=True)
chat = cfg.train.chat
usual = usual_values(model, tok, garden.replay[:256], chat)
width = site_width(model, "mlp")
for name in ["attribution", "nmd", "activation"]:
    t = time.time()
    s = SELECTORS.get(name)(model, tok, garden.facts, usual, chat, 0)
    for k in (45, 461, 2304):
        print(name, k, "recall %.3f" % recall_at_k(top_k(s, k), garden.planted, width), "%.0f s" % (time.time() - t), flush=True)
    np.save("/tmp/exp/%s_s%d.npy" % (name, cfg.seed), s)
