"""What transformers' causal-LM loss holds, by release (a registry as data).

The loss a `*ForCausalLM` model computes when given labels (the Trainer's, TRL's SFTTrainer's), on logits that the
LM head makes in the compute dtype (e bytes):
- up to 4.45 the model upcasts them as it makes them (`logits = self.lm_head(...).float()`, the 16-bit tensor is
  dropped at once) and shifts a contiguous copy (`shift_logits = logits[..., :-1, :].contiguous()`): forward holds
  the fp32 logits, their shifted copy and log_softmax's fp32 output, 12 bytes per logit;
- 4.46.0 to 4.48.x move the loss into `loss/loss_utils.py` `ForCausalLMLoss`, called with the model's 16-bit logits,
  which the model keeps for its output while the loss runs: `logits = logits.float()` then the same contiguous
  shifted copy, then cross_entropy's log_softmax: e + 4 + 4 + 4 bytes per logit at forward's peak (14 under bf16;
  in fp32 `.float()` returns the same tensor: 12);
- from 4.49.0 the labels are shifted instead (`nn.functional.pad(labels, (0, 1), value=ignore_index)`, PR #35646,
  "removing unnecessary contiguous() call"): e + 4 + 4 at forward's peak.
Backward holds log_softmax's saved fp32 output and the two fp32 gradients, 12 bytes per logit, in every release
(planner.loss_memory). The logits the model returns for its output are therefore fp32 from 4.31 to 4.45 and in the
compute dtype otherwise (OUTPUT_LOGITS_FP32): what a training loop that keeps the output through backward holds
(planner.memory_knobs.held_output_bytes_per_logit). Read from the released wheels'
`transformers/loss/loss_utils.py` (4.46.1, 4.48.3, 4.49.0) and `models/llama/modeling_llama.py` (4.45.2). The
planner's default ("" = a current release) is the last.
"""

from __future__ import annotations

from planner.releases import ReleaseRanges, has_behaviour, parse_release

# (first release, last release, the loss keeps a shifted fp32 copy of the logits beside the model's 16-bit logits)
LOSS_SHIFTED_COPY: ReleaseRanges = (
    ((4, 0, 0), (4, 45, 99), False),
    ((4, 46, 0), (4, 48, 99), True),
    ((4, 49, 0), (99, 0, 0), False),
)


# (first release, last release, the model's output logits are fp32). Read from the released wheels'
# models/llama/modeling_llama.py: 4.30.2 returns the lm_head's output as it is; 4.31.0 adds `logits = logits.float()`
# after the head (with Llama 2's pretraining_tp) and 4.45.2 still upcasts (`.float()`, "remove the float() operation
# in v4.46"); 4.46.0 passes the head's logits to `self.loss_function`, which upcasts inside.
OUTPUT_LOGITS_FP32: ReleaseRanges = (
    ((4, 0, 0), (4, 30, 99), False),
    ((4, 31, 0), (4, 45, 99), True),
    ((4, 46, 0), (99, 0, 0), False),
)


def parse_transformers_version(text: str) -> str:
    """'' (a current release) or MAJOR.MINOR[.PATCH] of a transformers release (>= 4.0)."""
    return parse_release(text, option="--transformers-version", example="4.46.1", oldest=LOSS_SHIFTED_COPY[0][0],
                         too_old=f"transformers {text.strip()} is older than the 4.x releases the planner knows")


def loss_keeps_shifted_copy(version: str) -> bool:
    """Whether transformers `version`'s causal-LM loss holds the model's 16-bit logits, their fp32 upcast and a
    shifted fp32 copy at once ('' = current: no)."""
    return has_behaviour(version, LOSS_SHIFTED_COPY)


def output_logits_fp32(version: str) -> bool:
    """Whether transformers `version`'s causal-LM model returns fp32 logits when given labels ('' = current: no, the
    compute dtype)."""
    return has_behaviour(version, OUTPUT_LOGITS_FP32)
