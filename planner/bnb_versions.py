"""What bitsandbytes' 4-bit matmul keeps for backward, by release (a registry as data).

bitsandbytes/autograd/_functions.py, class MatMul4Bit (the autograd function behind Linear4bit, QLoRA):
- from 0.39.0 (QLoRA's 4-bit layers, commit 4ea489d3 "Refactor FP4 into 4Bit and integrate NF4 data type";
  the repository's 0.39.1, 0.41.0 and 0.43.1 tags read the same) up to 0.43.1, forward ends with
  `ctx.tensors = (A, B)` whenever A or B needs a gradient: the layer's input A stays alive until backward
  although backward needs only B (grad_A = grad_output @ dequantize(B)). It is a plain ctx attribute, not
  ctx.save_for_backward, so saved-tensor hooks (non-reentrant activation checkpointing, activation
  offloading) do not see it: every layer keeps it, checkpointed or not.
- from 0.43.2 on, commit 9e753741 (PR #1270, "fix QLoRA mem bug: delete useless buffered activation",
  2024-07-16) stores `ctx.tensors = (None, B)`: nothing of the input is kept.
The planner's default ("" = a current release) is the second; `--bnb-version 0.41.1` asks for the first.
"""

from __future__ import annotations

import re

from planner.errors import PlanError

# (first release, last release, keeps the 4-bit linear's input for backward); releases as (major, minor, patch)
MATMUL_4BIT_KEEPS_INPUT: tuple[tuple[tuple[int, int, int], tuple[int, int, int], bool], ...] = (
    ((0, 39, 0), (0, 43, 1), True),
    ((0, 43, 2), (99, 0, 0), False),
)


def parse_bnb_version(text: str) -> str:
    """'' (a current release) or MAJOR.MINOR[.PATCH] of a bitsandbytes release with 4-bit layers (>= 0.39.0)."""
    text = text.strip()
    if not text:
        return ""
    if not re.fullmatch(r"\d{1,4}\.\d{1,4}(\.\d{1,4})?", text):
        raise PlanError(f"--bnb-version must look like 0.41.1, got {text!r}")
    if _release(text) < MATMUL_4BIT_KEEPS_INPUT[0][0]:
        raise PlanError(f"bitsandbytes {text} has no 4-bit layers (they came in 0.39.0)")
    return text


def _release(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(".")] + [0]
    return parts[0], parts[1], parts[2]


def keeps_quantized_input(version: str) -> bool:
    """Whether bitsandbytes `version` keeps every 4-bit linear's input until backward ('' = current: no)."""
    if not version:
        return False
    release = _release(version)
    return any(first <= release <= last and keeps for first, last, keeps in MATMUL_4BIT_KEEPS_INPUT)
