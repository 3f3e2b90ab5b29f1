# As run on 2026-12-05 (one thread, beside two localize runs), on the weights the margin
# script saved. docs/log/localization.md, "The planted control on SmolLM2-135M".
"""Exploratory, seed 0: do the planted neurons that attribution ranks low matter at all?
Exact deletion (usual value, every position) of planted neurons by attribution quartile."""
import numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
from memgen.core.config import load_config
from memgen.core.examples import read_split
from memgen.core.modeling import load_run_model
from memgen.core.answers import answer_batches, greedy_writes
from memgen.core.hooks import intervene
from memgen.localize.plant import make_facts, Neurons, random_neurons
from memgen.localize.test import usual_value_ablation
torch.set_num_threads(1)
run = Path("/tmp/runs/smol-v5-s0-loc")
cfg = load_config(run / "config.yaml", [])
model, tok = load_run_model(run / "train", cfg.train, "cpu")
model = model.merge_and_unload()
model.load_state_dict(load_file("/tmp/exp/planted_mlp_s0.safetensors"), strict=False)
model.eval()
facts = make_facts(read_split(run / "data", "train"), 16, cfg.seed)
d = np.load("/tmp/exp/scores_s0.npz"); mean = d["mean"]
pl = Neurons(d["layers"], d["idx"]); a = d["a_f"]
@torch.no_grad()
def loglik():
    total = 0.0
    for b in answer_batches(model, tok, facts, False):
        out = model(**b); total += float(out.loss) * int((b["labels"][:, 1:] != -100).sum())
    return -total / len(facts)
def measure(n):
    with intervene(model, usual_value_ablation(n, mean)):
        return loglik(), float(np.mean(greedy_writes(model, tok, facts, False)))
print("none", loglik(), flush=True)
order = np.argsort(-a[pl.layers, pl.indices])
for q in range(4):
    rows = order[q * len(order) // 4:(q + 1) * len(order) // 4]
    print("planted quartile", q, len(rows), measure(Neurons(pl.layers[rows], pl.indices[rows])), flush=True)
rng = np.random.default_rng(5)
for i in range(3):
    n = random_neurons(np.bincount(pl.layers[order[:112]], minlength=30), 1536, rng)
    print("random like q0", measure(n), flush=True)
