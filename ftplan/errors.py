"""How a user's mistake reaches them: one line on stderr and exit code 2 (the CLI), or the same line as the
422 detail (`ftplan serve`)."""

from __future__ import annotations

import sys

from planner.errors import PlanError


def fail(message: str) -> None:
    """One readable line on stderr, exit code 2."""
    print(f"ftplan: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def error_line(exc: BaseException) -> str | None:
    """The one line a user's mistake gets (after `ftplan: error: `), or None for a bug; `ftplan serve` sends it
    as the 422 detail."""
    from planner.input_checks import one_line  # control characters from the input stay on one line

    if isinstance(exc, PlanError):
        return one_line(str(exc))
    # click usage errors (typer vendors its own click) arrive here in non-standalone mode
    if any(cls.__name__ == "ClickException" for cls in type(exc).__mro__):
        param = getattr(exc, "param", None)
        where = f"{'/'.join(param.opts)}: " if param is not None and getattr(param, "opts", None) else ""
        return one_line(where + " ".join(exc.format_message().split()))  # type: ignore[attr-defined]
    # sizes past what the input checks bound (a last line of defence: those checks come first)
    if isinstance(exc, OverflowError | RecursionError | MemoryError):
        return f"the input is too large to plan ({type(exc).__name__})"
    return None
