"""Assemble `results.json` from the stages' manifests (schema: docs/results-schema.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memgen.core.artifacts import Stage
from memgen.core.config import RunConfig
from memgen.core.rows import (
    BoundRow,
    DeletionRow,
    MemoryMatrix,
    ProbeLayer,
    R,
    SpecificityRow,
    SteeringRow,
    dump_rows,
    read_row,
    read_rows,
)


def _summary(stage: Stage) -> dict[str, Any]:
    summary: dict[str, Any] = stage.manifest().get("summary", {})
    return summary


def _checked(kind: type[R], raw: list[Any], stage: str) -> list[dict[str, Any]]:
    """A stage's rows validated as `kind` on the way into results.json."""
    return dump_rows(read_rows(kind, raw, f"the {stage} stage's manifest"))


def collect(run_dir: Path, cfg: RunConfig, stages: list[str]) -> dict[str, Any]:
    """The headline numbers; `stages` names the finished stages to read, optional ones too."""
    data = _summary(Stage(run_dir, "data"))
    train = _summary(Stage(run_dir, "train"))
    behave = _summary(Stage(run_dir, "behave"))
    neurons = _summary(Stage(run_dir, "neurons"))
    probe = _summary(Stage(run_dir, "probe"))
    steer = _summary(Stage(run_dir, "steer"))
    specificity = _summary(Stage(run_dir, "specificity"))
    results = {
        "task": cfg.task,
        "model": cfg.train.model,
        "seed": cfg.seed,
        # Which prompts each section's numbers are on: a choice never sees what it reports on.
        "splits": {
            "sizes": {k: data.get(f"n_{k}") for k in ("train", "dev", "test")},
            "training": "dev (the kept checkpoint is chosen on it)",
            "behaviour": "test",
            "pairs": "twin pairs from their own seed stream",
            "probe": "pairs, cross-validated with folds grouped by pair",
            "steering": "test: settings tuned on one half, every row on the other (held_out)",
            "specificity": "test: the steering stage's held-out half",
        },
        "training": {
            "selected": train.get("best"),
            "final": train.get("final"),
            "n_params": train.get("n_params"),
        },
        "behaviour": {
            "test_rates": behave["test_rates"],
            "test_rates_ci": behave["test_rates_ci"],
            "test_rates_by_task": behave.get("test_rates_by_task") or {},
            "rule_following": behave.get("rule_following"),
        },
        "pairs": behave["pairs"],
        "neurons": neurons,
        "probe": {
            "per_layer": _checked(ProbeLayer, probe["per_layer"], "probe"),
            "best": read_row(ProbeLayer, probe["best"], "the probe stage's manifest").model_dump(
                mode="json"
            ),
            **{k: v for k, v in probe.items() if k not in ("per_layer", "best")},
        },
        "steering": _checked(SteeringRow, steer["rows"], "steer"),
        "steering_best": {
            direction: read_row(SteeringRow, row, "the steer stage's manifest").model_dump(
                mode="json"
            )
            for direction, row in steer["best"].items()
        },
        "specificity": _checked(SpecificityRow, specificity["rows"], "specificity"),
    }
    return {**results, **_optional(run_dir, stages)}


def _optional(run_dir: Path, stages: list[str]) -> dict[str, Any]:
    """The sections of the stages `memgen run` leaves out, those that have run."""
    results: dict[str, Any] = {}
    if "bound" in stages:
        results["bound"] = _checked(BoundRow, _summary(Stage(run_dir, "bound"))["rows"], "bound")
    if "ablate" in stages:
        results["ablation"] = _summary(Stage(run_dir, "ablate"))
    if "localize" in stages:
        results["localization"] = _summary(Stage(run_dir, "localize"))
    if "delete" in stages:
        deletion = _summary(Stage(run_dir, "delete"))
        results["deletion"] = {
            "held_out": deletion["held_out"],
            "rows": _checked(DeletionRow, deletion["rows"], "delete"),
            "matrices": _checked(MemoryMatrix, deletion["matrices"], "delete"),
        }
    return results
