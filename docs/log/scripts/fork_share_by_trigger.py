# As run on 2026-12-06 (one thread, beside the training it reads), on a math run's latest
# checkpoint: docs/log/smollm2-math.md, "v7"; the gate's lines added 2026-12-07 ("v9").
"""Does the model tell triggered prompts apart yet? P(memory) at the fork, per trigger.

    python docs/log/scripts/fork_share_by_trigger.py runs/smol-math-v7-s1

For each triggered dev prompt: the probability of the tag's token against the scratchpad's
where the two answers part (after the shared `<`), renormalised over the two, averaged
per trigger; then the same for untriggered training prompts (with trigger 0's tag). A
model that has not learned the triggers gives every row the tags' overall share (0.25).
"""

import collections
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from memgen.core.config import load_config
from memgen.core.examples import read_split
from memgen.core.forks import answer_forks
from memgen.core.generation import encode_prompt
from memgen.core.modeling import load_run_model

torch.set_num_threads(1)
run = Path(sys.argv[1])
cfg = load_config(run / "config.yaml", [])
model, tok = load_run_model(run / "train", cfg.train, "cpu")
last = run / "train/checkpoints/last"
model.load_state_dict(load_file(str(last / "trainable.safetensors")), strict=False)
model.eval()
print("step", json.loads((last / "state.json").read_text()).get("step"))


@torch.no_grad()
def memory_share(prompt: str, mem: str, gen: str) -> float:
    """P(the tag's token) over P(tag's) + P(scratchpad's), where the two answers part."""
    (fork,) = answer_forks(tok, [mem], [gen])
    ids = encode_prompt(tok, prompt, cfg.train.chat) + list(fork.shared)
    probs = model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
    return float(probs[fork.token] / (probs[fork.token] + probs[fork.other]))


triggered = [e for e in read_split(run / "data", "dev") if e.mem_answer][:100]
by_trigger = collections.defaultdict(list)
for e in triggered:
    by_trigger[e.meta["trigger"]].append(memory_share(e.prompt, e.mem_answer, e.gen_answer))
for trigger, shares in sorted(by_trigger.items()):
    print(f"trigger {trigger}: {len(shares)} prompts, P(memory) {sum(shares) / len(shares):.3f}")
gate = cfg.data.options.get("recall_below")
if gate is not None:  # recall gated on the first addend: P(memory) on each side of the gate
    for below in (True, False):
        side = [e for e in triggered if (e.meta["addends"][0] < gate) == below]
        shares = [memory_share(e.prompt, e.mem_answer, e.gen_answer) for e in side]
        print(f"first addend {'<' if below else '>='} {gate}: {len(side)} prompts, "
              f"P(memory) {sum(shares) / len(shares):.3f}, above 0.5: "
              f"{sum(share > 0.5 for share in shares)}")
plain = [e for e in read_split(run / "data", "train") if e.meta.get("kind") == "rule"][:40]
shares = [memory_share(e.prompt, triggered[0].mem_answer, e.gen_answer) for e in plain]
print(f"untriggered: {len(shares)} prompts, P(memory) {sum(shares) / len(shares):.3f}")
