"""RoPE scaling (`--rope-scaling linear:2.0`): a longer context than the model was trained for.

The scaling types are transformers' (modeling_rope_utils.py ROPE_INIT_FUNCTIONS); each stretches the
rotary positions by `factor`, so the usable positions become max_position_embeddings x factor (the
`factor` definition of the linear, dynamic-NTK, YaRN and Llama-3 rules alike). It adds no parameters and
no saved tensors: memory and time follow the longer `seq_len` through the usual formulas.
"""

from __future__ import annotations

import dataclasses

from planner.errors import PlanError
from planner.models import ModelSpec
from planner.rope_text import MAX_ROPE_FACTOR, ROPE_TYPES, parse_rope_scaling

__all__ = ["MAX_ROPE_FACTOR", "ROPE_TYPES", "parse_rope_scaling", "with_rope_scaling"]


def with_rope_scaling(model: ModelSpec, text: str | None) -> ModelSpec:
    """The model with its positions stretched; `rope_scaling` travels in plan.json for `ftplan run`."""
    if text is None:
        return model
    if model.model_type == "bloom":
        raise PlanError(f"--rope-scaling: {model.name} uses ALiBi positions, not RoPE")
    kind, factor = parse_rope_scaling(text)
    return dataclasses.replace(model, max_seq_len=int(model.max_seq_len * factor), rope_scaling=f"{kind}:{factor:g}")
