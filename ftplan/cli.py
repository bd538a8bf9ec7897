"""ftplan: plan, profile, emit, run and tune LLM fine-tuning. A thin typer layer over the packages."""

from __future__ import annotations

import sys

import typer

from planner.errors import PlanError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Memory and throughput planner and autotuner for fine-tuning LLMs.")


def _register() -> None:
    # Each command module adds its commands to `app`; planning modules import no torch at import time.
    from ftplan import cmd_plan  # noqa: F401

    for optional in ("cmd_scale", "cmd_emit", "cmd_profile", "cmd_run", "cmd_tune", "cmd_serve"):
        try:
            __import__(f"ftplan.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ftplan.{optional}":
                raise


def fail(message: str) -> None:
    """One readable line on stderr, exit code 2."""
    print(f"ftplan: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def error_line(exc: BaseException) -> str | None:
    """The one line a user's mistake gets (after `ftplan: error: `), or None for a bug; `ftplan serve` sends it
    as the 422 detail."""
    from planner.input_checks import one_line

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


def main() -> None:
    from ftplan.guard import guard_commands

    _register()
    try:
        # every command checks its numbers (finite, bounded) before it runs (ftplan/guard.py)
        guard_commands(typer.main.get_command(app))(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted")
    except SystemExit:
        raise
    except Exception as exc:
        line = error_line(exc)
        if line is None:
            raise
        fail(line)


if __name__ == "__main__":
    main()
