"""Typed result rows (issue 33): one shape per row, documented, and refused when it drifts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from memgen.core import rows
from memgen.core.errors import MemgenError

SCHEMA = (Path(__file__).parents[1] / "docs" / "results-schema.md").read_text()
MODELS = [
    model
    for model in vars(rows).values()
    if isinstance(model, type) and issubclass(model, rows.Row) and model is not rows.Row
]


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_every_field_of_every_row_is_in_the_results_schema(model: type[rows.Row]) -> None:
    missing = [
        name for name in model.model_fields if not re.search(rf"\b{re.escape(name)}\b", SCHEMA)
    ]
    assert not missing, f"document {model.__name__}'s {missing} in docs/results-schema.md"


def test_a_row_with_a_renamed_field_is_refused_in_one_line_naming_the_fix() -> None:
    written = {"site": "mlp", "layer": 3, "accuracy": 0.8, "ci_low": 0.7, "ci_high": 0.9, "n": 80}
    assert rows.read_row(rows.ProbeLayer, written, "probe.json").layer == 3
    renamed = {**{k: v for k, v in written.items() if k != "n"}, "n_prompts": 80}
    with pytest.raises(MemgenError, match=r"^probe\.json: .*--force$") as caught:
        rows.read_row(rows.ProbeLayer, renamed, "probe.json")
    assert "\n" not in str(caught.value)


def test_rows_are_frozen_and_dump_to_plain_json() -> None:
    spread = rows.Spread(n=2, mean=0.5, sd=0.1, ci_low=None, ci_high=None, min=0.4, max=0.6)
    with pytest.raises(ValueError):
        spread.mean = 1.0  # type: ignore[misc]
    assert rows.dump_rows([spread]) == [
        {"n": 2, "mean": 0.5, "sd": 0.1, "ci_low": None, "ci_high": None, "min": 0.4, "max": 0.6}
    ]
