"""Tables fit an 80-column terminal and wrap plan names only at their `-` boundaries, never inside a token
(`Z1-TP1-PP1-DP8-mb1-g` / `a8-adamw_8bit` was the complaint)."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from planner.build import build_config
from planner.estimate import Limits
from planner.scaling import scale
from planner.search import SearchSpace, plan
from planner.strategy import Method
from reports.plan_report import plan_view
from reports.scale_report import scale_view
from reports.wrap import HyphenWrapped


def render(renderable, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text().splitlines()


def plan_cells(lines: list[str], header: str, next_header: str, first_col: str) -> list[list[str]]:
    """The plan column's fragments per table row (a row starts where its first column is filled)."""
    head = next(i for i, line in enumerate(lines) if re.search(rf"\b{header}\b", line) and next_header in line)
    start, end = lines[head].index(header), lines[head].index(next_header)
    key = lines[head].index(first_col)
    rows: list[list[str]] = []
    for line in lines[head + 2:]:
        if not line.strip():
            break
        # a plan fragment has no spaces; a wide right-aligned neighbour may start inside the header's span
        found = re.match(r"\S*", line[start:end + 8]) if len(line) > start else None
        fragment = found.group(0) if found else ""
        if line[:start].strip() and line[key:start].strip():
            rows.append([fragment])
        elif fragment and rows:
            rows[-1].append(fragment)
    return rows


def test_hyphen_wrapped_lines() -> None:
    name = HyphenWrapped("Z1-TP1-PP1-DP8-mb1-ga8-adamw_8bit")
    assert name.lines(80) == ["Z1-TP1-PP1-DP8-mb1-ga8-adamw_8bit"]
    assert name.lines(20) == ["Z1-TP1-PP1-DP8-mb1-", "ga8-adamw_8bit"]
    assert name.lines(10) == ["Z1-TP1-", "PP1-DP8-", "mb1-ga8-", "adamw_8bit"]


def check_rows(rows: list[list[str]], names: list[str]) -> None:
    assert [("".join(r)) for r in rows] == names
    for fragments in rows:
        assert all(f.endswith("-") for f in fragments[:-1]), fragments  # broken only after a hyphen


@pytest.mark.parametrize("width", [80, 100])
def test_plan_table_fits_and_wraps_at_hyphens(width: int) -> None:
    base = build_config(model="7b", gpus="8xA800", check=False)
    result = plan(base, SearchSpace(), Limits())
    lines = render(plan_view(result, 3), width)
    assert max(len(line) for line in lines) <= width
    shown, seen = [], {}
    for est in result.plans:
        if seen.get(est.config.method, 0) < 3:
            seen[est.config.method] = seen.get(est.config.method, 0) + 1
            shown.append(str(est.config))
    check_rows(plan_cells(lines, "plan", "GiB/GPU", "method"), shown)


def test_scale_table_fits_and_wraps_at_hyphens() -> None:
    base = build_config(model="7b", gpus="1xA800", method=Method.full, check=False)
    result = scale(base, 16, SearchSpace(methods=(Method.full,)), Limits())
    lines = render(scale_view(result, model="llama-2-7b", gpu="A800", method="full"))
    assert max(len(line) for line in lines) <= 80
    check_rows(plan_cells(lines, "plan", "tokens/s", "GPUs"), [str(p.best.config) for p in result.points])
