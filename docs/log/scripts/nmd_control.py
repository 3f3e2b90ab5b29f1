"""alpha x NMD's held-out rows beside their matched control, before and after the control
was rescaled to push as hard (2026-12-06), as markdown table rows.

    python docs/log/scripts/nmd_control.py OLD_RUN NEW_RUN [OLD_RUN NEW_RUN ...]

OLD_RUN is a run whose `steer` gave random neurons their own NMD; NEW_RUN a copy of it
with `steer` run again (`memgen run --run-dir NEW_RUN --until steer
'steer.methods=[nmd,nmd_sd]' steer.draws=19`). Reads each run's steer/steering.json.
"""

import json
import sys
from pathlib import Path

DIRECTIONS = {"mem_to_gen": "gen", "gen_to_mem": "mem"}


def held_out(run: Path) -> dict[tuple[str, str], dict]:
    rows = json.loads((run / "steer" / "steering.json").read_text())["rows"]
    return {
        (row["method"], row["direction"]): row
        for row in rows
        if row["method"] in ("nmd", "nmd_sd") and row["split"] == "held_out"
    }


def cell(old: dict, new: dict, toward: str) -> tuple[str, str, str, str]:
    low, high = new["ci"][toward]
    matched = new["controls"]["matched"]
    target = matched["target"]
    return (
        f"{100 * new['targeted'][toward]:.1f} [{100 * low:.1f}, {100 * high:.1f}]",
        f"{100 * old['controls']['matched']['target']['mean']:.1f}",
        f"{100 * target['mean']:.1f} ({100 * target['min']:.1f}-{100 * target['max']:.1f})",
        f"{matched['p_value']:.2f}",
    )


def main(paths: list[str]) -> None:
    print(
        "| run | method | targeted % [95% CI], mem -> gen / gen -> mem | own-NMD control "
        "| push-matched control: mean (range) | rank p |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for old_path, new_path in zip(paths[::2], paths[1::2], strict=True):
        old, new = held_out(Path(old_path)), held_out(Path(new_path))
        for method in ("nmd", "nmd_sd"):
            cells = [
                cell(old[method, direction], new[method, direction], toward)
                for direction, toward in DIRECTIONS.items()
                if (method, direction) in new and (method, direction) in old
            ]
            if cells:
                columns = [" / ".join(parts) for parts in zip(*cells, strict=True)]
                print(f"| {new_path} | {method} | " + " | ".join(columns) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
