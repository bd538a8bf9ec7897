"""Shared printing for golden tests: every comparison prints its measured deviation (run pytest -s to see)."""

from __future__ import annotations

GiB = 2**30


def deviation(planner: float, published: float) -> float:
    """Relative deviation of the planner from the published figure (0.05 = planner 5% higher)."""
    return planner / published - 1.0


def report(source: str, figure: str, published: float, planner: float, unit: str, tolerance: str) -> float:
    dev = deviation(planner, published) if published else 0.0
    print(f"[golden] {source} | {figure}: published {published:.2f} {unit}, planner {planner:.2f} {unit}, "
          f"deviation {dev:+.1%} (tolerance {tolerance})")
    return dev
