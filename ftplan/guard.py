"""Numbers from the command line (or a request body parsed by the same commands) before any command sees them.

typer parses `--host-memory nan`, `--tokens inf` and `--seq-len 1e400`'s cousins without complaint; a NaN
then passes every `x <= 0` check (the capacity checks it feeds switch off) and an infinity or a 300-digit
integer overflows later, far from the option. Every float option must be finite and every number at most
`MAX_FLOAT` / `MAX_INT` in size; the planner's own bounds (planner/input_checks.py) are tighter where the
domain says so. The check walks lists and dataclass option groups, so new options are covered unasked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

from planner.errors import PlanError

MAX_INT = 2**53  # integers a float holds exactly
MAX_FLOAT = 1e18


def _label(command: Any, name: str) -> str:
    for param in getattr(command, "params", ()):
        if param.name == name and getattr(param, "opts", None):
            return param.opts[0]
    return "--" + name.replace("_", "-")


def _check(label: str, value: Any, depth: int = 0) -> None:
    if isinstance(value, bool) or value is None or depth > 8:
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PlanError(f"{label}: expected a finite number, got {value}")
        if abs(value) > MAX_FLOAT:
            raise PlanError(f"{label}: {value:g} is out of range (at most {MAX_FLOAT:g})")
    elif isinstance(value, int):
        if abs(value) > MAX_INT:
            raise PlanError(f"{label}: {value:.3g} is out of range (at most {MAX_INT:,})")
    elif isinstance(value, list | tuple):
        for item in value:
            _check(label, item, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _check(f"--{field.name.replace('_', '-')}", getattr(value, field.name), depth + 1)


def check_numbers(command: Any, params: Mapping[str, Any]) -> None:
    """Refuse a non-finite or oversized number among a command's parsed options (PlanError, one line)."""
    for name, value in params.items():
        _check(_label(command, name), value)


def _guarded(command: Any, callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        check_numbers(command, kwargs)
        return callback(*args, **kwargs)

    return run


def guard_commands(group: Any) -> Any:
    """Every command of a click group (typer.main.get_command) checks its numbers before it runs; returned."""
    for command in getattr(group, "commands", {}).values():
        if getattr(command, "commands", None):
            guard_commands(command)
        elif command.callback is not None:
            command.callback = _guarded(command, command.callback)
    return group
