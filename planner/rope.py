"""RoPE scaling (`--rope-scaling linear:2.0`): a longer context than the model was trained for.

The scaling types are transformers' (modeling_rope_utils.py ROPE_INIT_FUNCTIONS); each stretches the
rotary positions by `factor`, so the usable positions become max_position_embeddings x factor (the
`factor` definition of the linear, dynamic-NTK, YaRN and Llama-3 rules alike). It adds no parameters and
no saved tensors: memory and time follow the longer `seq_len` through the usual formulas.
"""

from __future__ import annotations

import dataclasses
import math

from planner.errors import PlanError
from planner.models import ModelSpec

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


def with_rope_scaling(model: ModelSpec, text: str | None) -> ModelSpec:
    """The model with its positions stretched; `rope_scaling` travels in plan.json for `ftplan run`."""
    if text is None:
        return model
    if model.model_type == "bloom":
        raise PlanError(f"--rope-scaling: {model.name} uses ALiBi positions, not RoPE")
    kind, factor = parse_rope_scaling(text)
    return dataclasses.replace(model, max_seq_len=int(model.max_seq_len * factor), rope_scaling=f"{kind}:{factor:g}")
