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

from planner.releases import ReleaseRanges, has_behaviour, parse_release

# (first release, last release, keeps the 4-bit linear's input for backward); releases as (major, minor, patch)
MATMUL_4BIT_KEEPS_INPUT: ReleaseRanges = (
    ((0, 39, 0), (0, 43, 1), True),
    ((0, 43, 2), (99, 0, 0), False),
)


def parse_bnb_version(text: str) -> str:
    """'' (a current release) or MAJOR.MINOR[.PATCH] of a bitsandbytes release with 4-bit layers (>= 0.39.0)."""
    return parse_release(text, option="--bnb-version", example="0.41.1", oldest=MATMUL_4BIT_KEEPS_INPUT[0][0],
                         too_old=f"bitsandbytes {text.strip()} has no 4-bit layers (they came in 0.39.0)")


def keeps_quantized_input(version: str) -> bool:
    """Whether bitsandbytes `version` keeps every 4-bit linear's input until backward ('' = current: no)."""
    return has_behaviour(version, MATMUL_4BIT_KEEPS_INPUT)
