"""The code's shape: no function in src/ over 60 lines (issue 33), with a shrinking list of
the ones that still are."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "memgen"
LIMIT = 60
# Still too long, each at most its length today: split them, then delete their line here.
NOT_YET = {
    "train/pretrain.py:pretrain": 74,
    "report/compare.py:format_table": 70,
}


def _lengths() -> dict[str, int]:
    lengths = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{path.relative_to(SRC)}:{node.name}"
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                lengths[name] = max(lines, lengths.get(name, 0))
    return lengths


def test_no_function_is_over_60_lines_but_the_listed_ones_which_only_shrink() -> None:
    lengths = _lengths()
    too_long = {name: n for name, n in lengths.items() if n > NOT_YET.get(name, LIMIT)}
    assert not too_long, f"split these functions (at most {LIMIT} lines): {too_long}"
    done = [name for name in NOT_YET if lengths.get(name, 0) <= LIMIT]
    assert not done, f"now within {LIMIT} lines: delete from NOT_YET: {done}"
