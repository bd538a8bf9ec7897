"""Rich renderable for `--emit`: the files written and the one command that starts training."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text


def emit_view(plan_name: str, files: list[tuple[Path, str]], start: str, others: list[tuple[str, str]],
              warnings: tuple[str, ...] = ()) -> Group:
    """`files`: (path, what it is); `start`: the command to run; `others`: (launcher, how to pick it)."""
    table = Table(title=f"Files for {plan_name}", title_justify="left")
    table.add_column("file", overflow="fold")  # a long path breaks across lines, never loses its end
    table.add_column("what")
    for path, role in files:
        table.add_row(str(path), role)
    parts: list = [table]
    parts += [Text(f"warning: {w}", style="yellow") for w in warnings]
    parts.append(Text.assemble(("Start training: ", "bold"), (start, "bold green")))
    if others:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="cyan", no_wrap=True)
        grid.add_column()
        for launcher, how in others:
            grid.add_row(launcher, how)
        parts += [Text("Other launchers (multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT):"), grid]
    return Group(*parts)
