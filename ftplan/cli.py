"""ftplan: plan, profile, emit, run and tune LLM fine-tuning. A thin typer layer over the packages."""

from __future__ import annotations

import typer

from ftplan.app import app
from ftplan.errors import error_line, fail

__all__ = ["app", "error_line", "fail", "main"]


def _register() -> None:
    # each command module adds its commands to `app`; planning modules import no torch at import time
    from ftplan import cmd_emit, cmd_plan, cmd_profile, cmd_run, cmd_scale, cmd_serve, cmd_tune  # noqa: F401


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
