"""Measured peaks of real runs: Megatron-LM pull request 482 (tools/get_training_info/README.md), Llama-2-7B,
bf16, one H800 node of 8 GPUs, sequence 2048, flash attention (--use-flash-attn), SwiGLU,
distributed optimizer (--use-distributed-optimizer), no sequence parallelism, no recompute (the tool
supports neither, and the runs were made to validate it), peak = torch.cuda.max_memory_allocated()
after several iterations (so no CUDA context and no allocator cache), reported by Megatron's
report_memory in MB of 2^20 bytes: the table's "GB" are GiB.

  MBS GBS  DP PP TP  measured  (Megatron's tool)
  2   2048 8  1  1   69.1      68.8
  4   512  4  1  2   55.7      55.5
  2   2048 4  2  1   49.8      49.5
  4   128  1  1  8   28.8      28.6

(VALIDATION.md's "DP8 PP2 (16 GPUs)" comes from a reviewer's comment on the PR; the README's table,
written by the authors who ran on "a single H800 machine with eight cards", has DP8 PP1 TP1.)

The planner models transformers + DeepSpeed / FSDP / DDP, not Megatron. Two comparisons, both on
the allocated part of the planner's peak (total minus the CUDA context and the allocator reserve):
1. The nearest configuration the planner models: DeepSpeed ZeRO-1 (the distributed optimizer shards
   the same states), full fine-tuning, bf16-mixed, AdamW, flash attention, same TP/PP/DP/MBS and
   gradient accumulation GBS/(DP x MBS). The gap is mostly model states: Megatron keeps a full fp32
   gradient buffer (main_grad, 4P) through backward where DeepSpeed ZeRO-1 keeps 16-bit gradients (2P) and
   makes its fp32 partition only inside step() (stage_1_and_2.py step). Reported as is; asserted with
   that stated difference (2P, on the planner's per-stage parameter count) added: ±15%.
2. The planner's activations and logits for that configuration plus Megatron's own model-state
   accounting (megatron/training/theoretical_memory_usage.py: 6 + 12/DP bytes per parameter with the
   distributed optimizer) on the planner's per-stage parameter count: this isolates the activation
   model. Tolerance ±6%.
"""

from __future__ import annotations

import pytest
from memory_golden import GiB, report

from planner.build import build_config
from planner.estimate import estimate
from planner.memory import stage_params
from planner.strategy import Attn, Method, Precision

# id -> (micro-batch, global batch, dp, pp, tp, measured GiB)
RUNS = {
    "DP8-MBS2": (2, 2048, 8, 1, 1, 69.1),
    "DP4-TP2-MBS4": (4, 512, 4, 1, 2, 55.7),
    "DP4-PP2-MBS2": (2, 2048, 4, 2, 1, 49.8),
    "TP8-MBS4": (4, 128, 1, 1, 8, 28.8),
}
NOT_ALLOCATED = ("CUDA context and workspaces", "allocator reserve")

# The tensor-parallel runs sit above the planner since it counts, as transformers' LlamaRMSNorm saves them
# (tests/profiler/test_saved_activations.py), the 16-bit normalized tensor each norm's trained weight
# multiplies, outside the TP split: 4h bytes per token per layer replicated on every TP rank. Megatron's
# layer under TP saves less there; which norm the runs used (Megatron's local RMSNorm, the same pattern as
# transformers', or Transformer Engine's fused LayerNormLinear, which keeps the input, its normalized copy and
# the fp32 inverse RMS) is not stated. Not identified; strict xfails.
_TP_NORMS = "Megatron's norms under TP save less than transformers' RMSNorm bookkeeping (see above)"
_XFAIL_TP = {("zero1", "TP8-MBS4"), ("megatron_states", "DP4-TP2-MBS4"), ("megatron_states", "TP8-MBS4")}


def _runs(test: str) -> list:
    return [pytest.param(r, marks=[pytest.mark.xfail(strict=True, reason=_TP_NORMS)] if (test, r) in _XFAIL_TP
                         else []) for r in RUNS]


def run_estimate(run: str):
    mbs, gbs, dp, pp, tp, _ = RUNS[run]
    cfg = build_config(model="llama-2-7b", gpus="8xH800", method=Method.full, precision=Precision.bf16_mixed,
                       zero=1, tp=tp, pp=pp, micro_batch=mbs, grad_accum=gbs // (dp * mbs), seq_len=2048,
                       attn=Attn.flash)
    assert cfg.dp == dp
    return cfg, estimate(cfg).memory


@pytest.mark.parametrize("run", _runs("zero1"))
def test_deepspeed_zero1_analogue(run: str) -> None:
    cfg, mem = run_estimate(run)
    allocated = mem.total - sum(mem.other_items[k] for k in NOT_ALLOCATED)
    report("Megatron-LM PR 482 (H800, measured)", f"{run}, planner ZeRO-1 analogue", RUNS[run][-1],
           allocated / GiB, "GiB", "reported")
    has_head = "logits and loss" in mem.other_items
    params = stage_params(cfg, first=not has_head or cfg.pp == 1).total
    main_grad_gap = 2.0 * params  # Megatron's fp32 main_grad (4P) against DeepSpeed ZeRO-1's 16-bit gradients (2P)
    dev = report("Megatron-LM PR 482 (H800, measured)", f"{run}, planner ZeRO-1 analogue + fp32 main_grad gap",
                 RUNS[run][-1], (allocated + main_grad_gap) / GiB, "GiB", "±15%")
    assert abs(dev) <= 0.15


@pytest.mark.parametrize("run", _runs("megatron_states"))
def test_activation_model_with_megatron_states(run: str) -> None:
    cfg, mem = run_estimate(run)
    assert mem.phase == "backward"
    has_head = "logits and loss" in mem.other_items
    params = stage_params(cfg, first=not has_head or cfg.pp == 1).total
    megatron_states = params * (6 + 12 / cfg.dp)
    peak = megatron_states + mem.activations + mem.other_items.get("logits and loss", 0.0)
    dev = report("Megatron-LM PR 482 (H800, measured)", f"{run}, planner activations + Megatron states",
                 RUNS[run][-1], peak / GiB, "GiB", "±6%")
    assert abs(dev) <= 0.06


def test_pipeline_stage0_holds_pp_micro_batches() -> None:
    _, mem = run_estimate("DP4-PP2-MBS2")
    assert "logits and loss" not in mem.other_items  # the reported stage is stage 0, not the head's
    # stage 0 holds PP micro-batches in flight (1F1B): twice the activations of one micro-batch pass
    # through its 16 layers, i.e. as much as all 32 layers at DP8
    _, dp8 = run_estimate("DP8-MBS2")
    assert mem.activations == pytest.approx(dp8.activations, rel=1e-9)
