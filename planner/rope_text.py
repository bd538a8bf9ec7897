"""`--rope-scaling TYPE:FACTOR` as text: its grammar and bounds (planner/rope.py applies it to a model).

Apart from planner/rope.py so that the input checks (planner/input_checks.py), which every model reader calls,
can read it without importing the model module.
"""

from __future__ import annotations

import math

from planner.errors import PlanError

ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")
# published factors reach 32-64 (YaRN, LongRoPE); 1024 keeps positions x factor within MODEL_BOUNDS
MAX_ROPE_FACTOR = 1024.0


def parse_rope_scaling(text: str) -> tuple[str, float]:
    """'linear:2.0' -> ('linear', 2.0)."""
    kind, _, factor = text.partition(":")
    if kind not in ROPE_TYPES:
        raise PlanError(f"--rope-scaling '{text}': type must be one of {', '.join(ROPE_TYPES)}")
    try:
        value = float(factor)
    except ValueError:
        raise PlanError(f"--rope-scaling '{text}': write TYPE:FACTOR, e.g. linear:2.0") from None
    if not math.isfinite(value) or value <= 1.0:
        raise PlanError(f"--rope-scaling '{text}': the factor must exceed 1")
    if value > MAX_ROPE_FACTOR:
        raise PlanError(f"--rope-scaling '{text}': the factor must be at most {MAX_ROPE_FACTOR:g}")
    return kind, value
