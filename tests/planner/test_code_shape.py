"""The planner stays readable: no function longer than about 80 lines (STYLE.md, "small modules")."""

from __future__ import annotations

import ast
from pathlib import Path

PLANNER = Path(__file__).resolve().parents[2] / "planner"
MAX_FUNCTION_LINES = 80


def function_lengths() -> dict[str, int]:
    """'path:name' -> lines from `def` to the last line of the body, docstring included."""
    out = {}
    for path in sorted(PLANNER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{path.relative_to(PLANNER.parent)}:{node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_planner_function_over_80_lines() -> None:
    lengths = function_lengths()
    assert len(lengths) > 100  # the walk found the planner's functions
    long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not long, f"planner functions over {MAX_FUNCTION_LINES} lines: {long}"
