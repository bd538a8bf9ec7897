"""The typer application every command module adds its commands to (ftplan.cli runs it)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def ftplan() -> None:
    """Memory and throughput planner and autotuner for fine-tuning LLMs."""
    # a callback keeps `ftplan` a group of commands even when ftplan.cli registered only the one it runs
