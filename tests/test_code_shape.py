"""The code's shape: no function in src/ is over 60 lines (issue 33)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "memgen"
LIMIT = 60


def test_no_function_is_over_60_lines() -> None:
    too_long = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > LIMIT:
                    too_long[f"{path.relative_to(SRC)}:{node.name}"] = lines
    assert not too_long, f"split these functions (at most {LIMIT} lines): {too_long}"
