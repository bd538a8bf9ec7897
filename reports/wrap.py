"""Plan names that wrap at their `-` boundaries, never inside a token (`Z1-TP1-PP1-DP8-` / `mb1-ga8-adamw_8bit`).

Rich wraps text at spaces and folds the rest mid-word; a plan name has no spaces. This renderable tells a
table the narrowest width it can take (its longest `-`-separated token) and packs tokens greedily into lines.
"""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style


class HyphenWrapped:
    def __init__(self, text: str, style: str | Style = "") -> None:
        self.text = text
        self.style = style
        parts = text.split("-")
        # every token keeps its hyphen, so a line break never loses one
        self.tokens = [p + "-" for p in parts[:-1]] + [parts[-1]]

    def __str__(self) -> str:
        return self.text

    def lines(self, width: int) -> list[str]:
        out: list[str] = []
        line = ""
        for token in self.tokens:
            if line and len(line) + len(token) > width:
                out.append(line)
                line = ""
            line += token
        out.append(line)
        return out

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(max(len(t) for t in self.tokens), len(self.text)).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        style = console.get_style(self.style) if isinstance(self.style, str) and self.style else self.style or None
        for line in self.lines(max(1, options.max_width)):
            if len(line) > options.max_width:  # a single token wider than the column: fold it, the only way left
                for i in range(0, len(line), options.max_width):
                    yield Segment(line[i:i + options.max_width], style)
                    yield Segment.line()
                continue
            yield Segment(line, style)
            yield Segment.line()
