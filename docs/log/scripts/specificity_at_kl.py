"""Tally specificity cells across runs: ahead of / behind every matched draw, by outcome.

    python docs/log/scripts/specificity_at_kl.py RUN [RUN ...]

For each site x scorer: cells where the selected set is ahead of all draws (rank p at its
floor) and behind all of them, on the flip share, on the logit-gap gain at equal budget and
on the gain with every draw scaled to the selected set's KL; and the selected set's KL over
the draws' mean KL (median over cells).
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

OUTCOMES = {
    "share": lambda r: (r["targeted"][r["direction"][-3:]], r["matched_per_draw"]),
    "gain": lambda r: (r["margin_gain"], r["matched_margin_gain"]),
    "gain at KL": lambda r: (r["margin_gain"], r["matched_margin_gain_at_kl"]),
}


def main(runs: list[str]) -> None:
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        for row in json.loads((Path(run) / "specificity" / "specificity.json").read_text())["rows"]:
            cells[row["site"], row["scorer"]].append(row)
    print("| site, scorer | cells | " + " | ".join(f"{o}: ahead / behind all" for o in OUTCOMES)
          + " | KL, selected / draws' mean (median) |")
    print("| --- " * (3 + len(OUTCOMES)) + "|")
    for (site, scorer), rows in sorted(cells.items()):
        tallies = []
        for pick in OUTCOMES.values():
            pairs = [pick(r) for r in rows]
            ahead = sum(x > max(d) for x, d in pairs)
            behind = sum(x < min(d) for x, d in pairs)
            tallies.append(f"{ahead} / {behind}")
        ratio = np.median([r["kl"] / np.mean(r["matched_kl"]) for r in rows])
        print(f"| {site}, {scorer} | {len(rows)} | " + " | ".join(tallies) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
