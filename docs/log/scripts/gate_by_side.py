# As run on 2026-12-07 on the v9 probe (docs/log/smollm2-math.md, "v9 probe").
"""Did the model learn the recall gate? Held-out answers on each side of it, and the flips.

    python docs/log/scripts/gate_by_side.py runs/gate-s0

For a math run trained with `data.options.recall_below`: the test answers (behave's
test_outputs.jsonl) split by whether the first addend is below the gate, with 95% Wilson
intervals; then, of behave's flipped pairs, how many swap their free addends across the
gate and how many have their memorized member on the gate's recalled side. A model that
learned only the triggers answers both sides alike.
"""

import collections
import json
import sys
from pathlib import Path

from memgen.core.config import load_config
from memgen.core.stats import wilson

run = Path(sys.argv[1])
gate = load_config(run / "config.yaml", []).data.options["recall_below"]
rows = [json.loads(line) for line in (run / "behave/test_outputs.jsonl").open()]
for below in (True, False):
    side = [r for r in rows if (r["example"]["meta"]["addends"][0] < gate) == below]
    counts = collections.Counter(r["label"] for r in side)
    cells = []
    for label in ("gen", "mem", "other"):
        low, high = wilson(counts[label], len(side))
        cells.append(f"{label} {counts[label] / len(side):.3f} [{low:.3f}, {high:.3f}]")
    print(f"first addend {'<' if below else '>='} {gate} (n = {len(side)}): " + ", ".join(cells))

pairs = collections.defaultdict(list)
for line in (run / "behave/pairs.jsonl").open():
    row = json.loads(line)
    pairs[row["pair_id"]].append(row)
across = on_side = 0
for members in pairs.values():
    first = {r["label"]: r["example"]["meta"]["addends"][0] < gate for r in members}
    across += first["mem"] != first["gen"]
    on_side += first["mem"] and not first["gen"]
print(f"flipped pairs {len(pairs)}: across the gate {across}, memory below it {on_side}")
