"""Deletion across runs (`memgen compare`): each deletion row of every run, side by side.

A deletion row (scorer, ablation, set size) of one seed is one draw. It is a result when
it holds on every seed, so `compare` lines the runs up: per run, the memorized answers
kept, the mean and least of its matched random sets, the rule answers kept and the rank
p-value; over runs, the mean and range of what was kept. Per-memory matrices the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memgen.core.rows import DeletionRow, MemoryMatrix, read_rows
from memgen.core.stats import SHARE, summarise

Key = tuple[str, str, str, float]  # task, scorer, ablation, size
Deletion = dict[str, Any]  # the delete stage's summary: held_out, rows, matrices


def _cell(run: str, row: DeletionRow) -> dict[str, Any]:
    return {
        "run": run,
        "k": row.k,
        "mem_kept": row.deleted.mem_kept,
        "random_mem_kept": row.random_mem_kept.mean,
        "random_mem_kept_min": row.random_mem_kept.min,
        "gen_kept": row.deleted.gen_kept,
        "train_kept": row.deleted.train_kept,
        "p_value": row.p_value,
        "p_value_net": row.p_value_net,
        "draws": len(row.random),
    }


def _matrix_cell(run: str, matrix: MemoryMatrix) -> dict[str, Any]:
    return {
        "run": run,
        "memories": len(matrix.memories),
        "diagonal": matrix.diagonal,
        "off_diagonal": matrix.off_diagonal,
        "own_most": matrix.own_most,
        "chance": matrix.chance,
        "p_value": matrix.p_value,
    }


def deletion_across(
    runs: Sequence[tuple[str, str, Deletion | None]],
) -> dict[str, list[dict[str, Any]]]:
    """`runs`: (name, task, deletion) triples; runs without a deletion are left out. Rows
    are grouped per task: a mean over seeds of one task is a result, over tasks it is not."""
    rows: dict[tuple[Key, str], list[dict[str, Any]]] = {}  # by key and control
    matrices: dict[Key, list[dict[str, Any]]] = {}
    for name, task, section in runs:
        if not section:
            continue
        where = f"{name}'s delete stage"
        for row in read_rows(DeletionRow, section["rows"], where):
            key = (task, row.scorer, row.ablation, row.size)
            rows.setdefault((key, row.control), []).append(_cell(name, row))
        for matrix in read_rows(MemoryMatrix, section["matrices"], where):
            key = (task, matrix.scorer, matrix.ablation, matrix.size)
            matrices.setdefault(key, []).append(_matrix_cell(name, matrix))
    return {
        "rows": [
            _entry(key, cells) | {"control": control} | _kept(cells)
            for (key, control), cells in rows.items()
        ],
        "matrices": [_entry(key, cells) for key, cells in matrices.items()],
    }


def _entry(key: Key, cells: list[dict[str, Any]]) -> dict[str, Any]:
    task, scorer, ablation, size = key
    return {"task": task, "scorer": scorer, "ablation": ablation, "size": size, "runs": cells}


def _kept(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """What the runs kept, summarised: one seed is one draw."""
    return {
        share: summarise([cell[share] for cell in cells], SHARE)
        for share in ("mem_kept", "gen_kept")
    }


def format_deletion(deletion: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per row: each run's memory kept (its random sets' mean), rule kept and p."""
    if not deletion["rows"]:
        return []
    lines = ["deletion: memory kept (random sets' mean), rule kept, p; per run"]
    for row in deletion["rows"]:
        runs = "; ".join(
            f"{c['run']} {c['mem_kept']:.3f} ({c['random_mem_kept']:.3f}), "
            f"{c['gen_kept']:.3f}, p {c['p_value']:.3f}"
            for c in row["runs"]
        )
        kept = row["mem_kept"]
        lines.append(
            f"  {row['task']}, {row['scorer']} {row['size']:.1%} ({row['ablation']}, "
            f"{row['control']}-matched): {runs} | "
            f"memory kept mean {kept['mean']:.3f}, range {kept['min']:.3f}-{kept['max']:.3f}"
        )
    for matrix in deletion["matrices"]:
        runs = "; ".join(
            f"{c['run']} own {c['diagonal']:.3f} vs others {c['off_diagonal']:.3f}, "
            f"p {c['p_value']:.3f}"
            for c in matrix["runs"]
        )
        name = f"{matrix['task']}, per memory, {matrix['scorer']} {matrix['size']:.1%}"
        lines.append(f"  {name} ({matrix['ablation']}): {runs}")
    return lines
