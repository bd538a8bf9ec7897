"""Reports that fit the terminal: fewer columns rather than truncated ones.

`FitTable` is a rich table whose columns carry a drop order: at the console's width it shows every column it
can without cutting a cell (`…`), dropping the least useful first (a measured tune's step range and trial
seconds before its calibrated prediction). Wrapping columns (plan names at their `-`, reasons at spaces) keep
a comfortable width before anything is dropped for them. `Bar` is a share drawn in the width its column gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.table import Table

_EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass(frozen=True)
class Col:
    header: str
    justify: str = "left"
    wrap: bool = False  # cells may wrap (never cut); the others keep one line
    drop: int = 0  # 0: always shown; narrower consoles drop the highest numbers first
    min_width: int | None = None  # a wrapping column's comfortable width (e.g. a plan name in two lines)


class FitTable:
    def __init__(self, columns: Sequence[Col], *, row_styles: Sequence[str | None] | None = None,
                 **table_kwargs: Any) -> None:
        self.columns = list(columns)
        self.rows: list[tuple[list[RenderableType], str | None]] = []
        self.table_kwargs = table_kwargs

    def add_row(self, *cells: RenderableType, style: str | None = None) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, the table {len(self.columns)} columns")
        self.rows.append((list(cells), style))

    @property
    def caption(self) -> Any:
        return self.table_kwargs.get("caption")

    @caption.setter
    def caption(self, text: Any) -> None:
        self.table_kwargs["caption"] = text

    def table(self, keep: Sequence[int] | None = None, widths: dict[int, int] | None = None) -> Table:
        """The rich Table with the columns `keep` (default all); `widths` fixes wrapping columns' widths."""
        keep = list(range(len(self.columns))) if keep is None else list(keep)
        # rich sizes a table without pad_edge as if its edges were padded and then cuts the last column by the
        # difference (rich 15): these tables always pad their edges
        table = Table(**{**self.table_kwargs, "pad_edge": True})
        for i in keep:
            c = self.columns[i]
            table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap,  # type: ignore[arg-type]
                             width=(widths or {}).get(i))
        for cells, style in self.rows:
            table.add_row(*(cells[i] for i in keep), style=style)
        return table

    def shown(self, console: Console, width: int) -> list[str]:
        """The headers of the columns shown at `width`."""
        table = self._fitted(console, console.options.update_width(width))
        return [str(c.header) for c in table.columns]

    def _measures(self, console: Console, i: int) -> tuple[int, int]:
        """Column `i`'s narrowest and natural content widths: one line for a no-wrap column (rich's own table
        measurement counts its words, so a table it says fits can still be cut at the edge)."""
        col = self.columns[i]
        wide = console.options.update_width(10_000)
        cells = [col.header, *(cells[i] for cells, _ in self.rows)]
        measures = [Measurement.get(console, wide, cell) for cell in cells]
        natural = max(m.maximum for m in measures)
        return (max(m.minimum for m in measures), natural) if col.wrap else (natural, natural)

    def _layout(self, console: Console, keep: list[int], width: int, comfortable: bool) -> Table | None:
        """The table at `width` with these columns, wrapping columns sized here (rich's own collapse can size a
        column below what it then renders), or None when they do not fit."""
        probe = self.table(keep)
        top, right, bottom, left = probe.padding
        overhead = (left + right) * len(keep) + ((2 if probe.show_edge else 0) + len(keep) - 1 if probe.box else 0)
        measured = {i: self._measures(console, i) for i in keep}
        wraps = [i for i in keep if self.columns[i].wrap]
        lows = {i: min(measured[i][1], max(measured[i][0], (self.columns[i].min_width or 0) if comfortable else 0))
                for i in wraps}
        room = width - overhead - sum(measured[i][1] for i in keep if i not in wraps)
        if sum(lows.values()) > room:
            return None
        if sum(measured[i][1] for i in wraps) <= room:
            return probe
        # share the room above each wrapping column's narrowest width in proportion to what it could still use
        spare, wants = room - sum(lows.values()), {i: measured[i][1] - lows[i] for i in wraps}
        total = sum(wants.values()) or 1
        widths = {i: lows[i] + spare * wants[i] // total for i in wraps}
        leftover = room - sum(widths.values())
        for i in sorted(wraps, key=lambda i: wants[i] - (widths[i] - lows[i]), reverse=True)[:leftover]:
            widths[i] += 1
        return self.table(keep, widths)

    def _fitted(self, console: Console, options: ConsoleOptions) -> Table:
        width = options.max_width
        keeps = [list(range(len(self.columns)))]
        for level in sorted({c.drop for c in self.columns if c.drop}, reverse=True):
            keeps.append([i for i in keeps[-1] if self.columns[i].drop != level])
        # wrapping columns at their comfortable width before any column is squeezed
        for comfortable in (True, False):
            for keep in keeps:
                table = self._layout(console, keep, width, comfortable)
                if table is not None:
                    return table
        return self.table(keeps[-1])

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._fitted(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self._fitted(console, options))


class Bar:
    """A share in [0, 1] as eighth-blocks over the width the cell gets (at most `width`)."""

    def __init__(self, fraction: float, width: int = 24, style: str | Style = "") -> None:
        self.fraction = max(0.0, min(1.0, fraction))
        self.width = width
        self.style = style

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, self.width).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, min(self.width, options.max_width))
        full, rest = divmod(round(self.fraction * width * 8), 8)
        text = "█" * full + ("" if rest == 0 else _EIGHTHS[rest])
        style = console.get_style(self.style) if isinstance(self.style, str) and self.style else self.style or None
        yield Segment(text, style)
        yield Segment.line()
