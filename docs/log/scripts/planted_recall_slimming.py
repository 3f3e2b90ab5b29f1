# As run on 2026-12-05 (one thread, beside two localize runs, 1,220 s), on the weights the
# margin script saved. docs/log/localization.md, "The planted control on SmolLM2-135M".
"""Exploratory, seed 0: does a learned slimming mask find SmolLM2's planted neurons?"""
import time
import numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
from memgen.core.config import load_config
from memgen.core.examples import read_split
from memgen.core.modeling import load_run_model
from memgen.localize.plant import make_facts, Neurons
from memgen.localize.test import top_k, recall_at_k
from memgen.record.masks import learned_mask
from memgen.record.readout import first_tokens
torch.set_num_threads(1)
run = Path("/tmp/runs/smol-v5-s0-loc")
cfg = load_config(run / "config.yaml", [])
model, tok = load_run_model(run / "train", cfg.train, "cpu")
model = model.merge_and_unload()
model.load_state_dict(load_file("/tmp/exp/planted_mlp_s0.safetensors"), strict=False)
model.eval()
examples = read_split(run / "data", "train")
facts = make_facts(examples, 16, cfg.seed)
fact_prompts = {f.prompt for f in facts}
rule = [ex for ex in examples[200:] if ex.meta.get("kind") == "rule" and ex.prompt not in fact_prompts][:64]
group = [*facts, *rule]
rule_ids = first_tokens(tok, [ex.gen_answer for ex in group])
d = np.load("/tmp/exp/scores_s0.npz"); pl = Neurons(d["layers"], d["idx"])
rc = cfg.record
t = time.time()
s = learned_mask(model, tok, [ex.prompt for ex in group], rule_ids, "slimming", steps=rc.mask_steps,
                 lr=rc.mask_lr, penalty=rc.mask_penalty, batch_size=32, chat=False, seed=0)
np.save("/tmp/exp/slimming_s0.npy", s)
print("slimming %.0f s" % (time.time() - t), [round(recall_at_k(top_k(s, k), pl, 1536), 3) for k in (45, 461, 2304)], flush=True)
