"""The typer application every command module adds its commands to (ftplan.cli runs it)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Memory and throughput planner and autotuner for fine-tuning LLMs.")
