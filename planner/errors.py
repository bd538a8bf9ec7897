"""The one error type a user can cause: the CLI prints its message on one line and exits 2."""

from __future__ import annotations

import difflib


class PlanError(ValueError):
    """Bad input or an impossible configuration, phrased for the user."""


def unknown_name_error(kind: str, name: str, known: list[str]) -> PlanError:
    close = difflib.get_close_matches(name.lower()[:200], known, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
    shown = name if len(name) <= 80 else name[:77] + "..."
    return PlanError(f"unknown {kind} '{shown}'{hint}")
