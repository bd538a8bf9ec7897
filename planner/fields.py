"""Fields of the option groups (planner.options, planner.strategy.Switches): a dataclass field whose metadata
says how a person sets it, as plain data, so that the planner keeps no CLI library. ftplan/options.py turns
each into a typer option; `ftplan serve` takes the same names as JSON fields.

    micro_batch: int = option(1, help="Sequences per GPU per forward.", panel="Batch")

The flag is the field's name with dashes (`--micro-batch`); a bool gets `--x/--no-x` unless `flags` says
otherwise; `min` / `max` bound numbers; `cli=False` keeps a field off the command line.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field, fields
from typing import Any


def option(default: Any = MISSING, *, help: str, flags: tuple[str, ...] = (), panel: str | None = None,
           min: float | None = None, max: float | None = None, cli: bool = True) -> Any:
    """A dataclass field with its help text, flag names, --help panel and range."""
    meta = {"help": help, "flags": flags, "panel": panel, "min": min, "max": max, "cli": cli}
    return field(default=default, metadata=meta)


def option_fields(cls: type) -> tuple[Field, ...]:
    """The fields of a group a person may set (those with `option` metadata and cli=True)."""
    return tuple(f for f in fields(cls) if f.metadata.get("cli", False))
