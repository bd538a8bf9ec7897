"""ftplan: plan, profile, emit, run and tune LLM fine-tuning. A thin typer layer over the packages."""

from __future__ import annotations

import importlib
import sys

import typer

from ftplan.app import app
from ftplan.errors import error_line, fail

__all__ = ["app", "error_line", "fail", "main"]

# which module adds which command: `ftplan plan ...` imports cmd_plan alone (planning starts sooner); help, a
# mistyped command or none at all imports them all
COMMANDS = {"estimate": "cmd_plan", "plan": "cmd_plan", "models": "cmd_plan", "gpus": "cmd_plan",
            "scale": "cmd_scale", "emit": "cmd_emit", "profile": "cmd_profile", "run": "cmd_run", "merge": "cmd_run",
            "tune": "cmd_tune", "serve": "cmd_serve"}  # in --help's order


def _register(command: str | None = None) -> None:
    # each command module adds its commands to `app`; planning modules import no torch at import time
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(f"ftplan.{name}")


def main() -> None:
    from ftplan.guard import guard_commands

    _register(sys.argv[1] if len(sys.argv) > 1 else None)
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
