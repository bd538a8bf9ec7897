"""Number formatting for people: the only place bytes become GiB and FLOP/s become TFLOP/s."""

from __future__ import annotations

import json
import sys
from typing import Any


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.2f} GiB"


def params(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f}{unit}"
    return f"{n:,.0f}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
