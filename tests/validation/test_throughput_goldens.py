"""Published training throughputs as goldens for the time model (planner.timing).

Sources and configurations: tests/validation/throughput_cases.py (Narayanan et al. 2021 Table 1;
Korthikanti et al. 2022 Tables 3 and 5; MT-NLG 530B, Smith et al. 2022 Sec. 3.3; DeepSpeedExamples
autotuning/hf README). Tolerance: 25% relative on each figure, chosen before looking at the results.
Known misses are strict xfails with their cause, so an improvement shows up as an XPASS to tighten:
- MT-NLG 530B (2240 / 2800 / 3360 GPUs): the planner is 27-30% fast, where Megatron-LM's own 529.6B run (Table 1)
  is met within 7%. Megatron-DeepSpeed's 35-stage pipeline is modelled with the DeepSpeed pipeline engine's sends
  (not split over TP) and a bubble of (p-1)/m; the run reached 113-126 TFLOP/s per GPU against Megatron-LM's 163 on
  the same model size, and what else it spent is not stated (Smith et al. 2022, Sec. 3.3).
- DeepSpeed autotuning, GPT-2 large on 16 V100s, micro-batch 2: the planner is 36% fast (micro-batch 3: +14%, within
  the bar; +47% / +24% at the fallback GEMM efficiency 0.80, before the V100's published 83 of 125 TFLOP/s). The run
  (transformers 4.12.0.dev0, the gpt2-large README says) computed GPT-2's own eager attention, before transformers
  had SDPA, and is planned so (planner/kernels.py SCORE_PASSES "gpt2_eager", checked op by op in
  tests/planner/test_attention_passes.py); planned with SDPA it was +116% / +84%. What is left is the shape: from
  micro-batch 2 to 3 the run's step went from 0.563 to 0.695 s, a line of 0.13 s per sample and GPU plus 0.30 s per
  step; the planner's is 0.195 s per sample plus 0.02 s (ZeRO-1's all-reduce and Adam; 0.18 s at the fallback 0.80).
  What the run's 0.3 s per step was is not established (the Trainer's per-step work, DeepSpeed's fp16 loss scaling
  and overflow checks, and the start-up share of a 200-step train_runtime are candidates; none is measured on V100s,
  whose matmul efficiency is one 2018 cuBLAS figure, planner/compute.py). Micro-batch 3 passes by the two errors
  cancelling: test_gpt2_autotuning_micro_batch_gain is the strict xfail that shows it.
The Megatron-LM runs (2021-2022) computed attention with materialized scores (fused scale-mask-softmax, no
FlashAttention) and ran Megatron's fused elementwise kernels: they are planned with eager attention and fused
elementwise kernels (throughput_cases.megatron_config).
Run with `pytest -s` to see every deviation.
"""

from __future__ import annotations

import pytest
from throughput_cases import cases, report

KNOWN_MISSES = {"mtnlg-530b-2240", "mtnlg-530b-2800", "mtnlg-530b-3360", "ds-autotuning-gpt2-large-mb2"}
TOLERANCE = 0.25


def _params():
    for case in cases():
        marks = [pytest.mark.xfail(strict=True, reason="known miss, see module docstring")] \
            if case.id in KNOWN_MISSES else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_published_throughput(case) -> None:
    value = case.planner_value()
    dev = report(case.source, case.figure, case.published, value, case.unit, f"{TOLERANCE:.0%}")
    assert abs(dev) <= TOLERANCE


@pytest.mark.parametrize("name", ["22B", "175B", pytest.param("530B", marks=pytest.mark.xfail(
    strict=True, reason="pipeline sends of the full baseline not split over TP (its 35 stages send whole "
    "b x s x h activations), see module docstring")), "1T"])
def test_korthikanti_selective_over_full_ratio(name: str) -> None:
    """Korthikanti et al. 2022, Table 5: SP + selective recomputation saves 22-24% of the iteration
    time against full recomputation (1.42/1.10, 18.13/13.75, 49.05/37.83, 94.42/71.49). The ratio
    cancels the absolute efficiency; tolerance 10%."""
    by_id = {c.id: c for c in cases()}
    full, sel = by_id[f"korthikanti-{name}-full"], by_id[f"korthikanti-{name}-selective"]
    published = full.published / sel.published
    planner = full.planner_value() / sel.planner_value()
    dev = report("Korthikanti et al. 2022, Table 5", f"{name} full / selective time", published, planner, "x", "10%")
    assert abs(dev) <= 0.10


def test_mtnlg_strong_scaling_ratio() -> None:
    """MT-NLG 530B: 2240 -> 3360 GPUs cut the iteration from 60.1 to 44.4 s (1.354x); tolerance 10%."""
    by_id = {c.id: c for c in cases()}
    published = 60.1 / 44.4
    planner = by_id["mtnlg-530b-2240"].planner_value() / by_id["mtnlg-530b-3360"].planner_value()
    dev = report("Smith et al. 2022 (MT-NLG)", "speedup 2240 -> 3360 GPUs", published, planner, "x", "10%")
    assert abs(dev) <= 0.10


@pytest.mark.xfail(strict=True, reason="the run's step has 0.3 s besides its per-sample time that the planner does "
                   "not count (0.02 s), see module docstring")
def test_gpt2_autotuning_micro_batch_gain() -> None:
    """DeepSpeedExamples autotuning/hf/gpt2-large README: micro-batch 3 ran 69.061 samples/s, micro-batch 2 56.797
    (1.216x), both ZeRO-1 on the same 16 V100s; tolerance 10%, as the other ratios."""
    by_id = {c.id: c for c in cases()}
    published = 69.06 / 56.80
    planner = (by_id["ds-autotuning-gpt2-large-mb3"].planner_value()
               / by_id["ds-autotuning-gpt2-large-mb2"].planner_value())
    dev = report("DeepSpeedExamples autotuning/hf README", "GPT-2 large mb3 / mb2 samples/s", published, planner, "x",
                 "10%")
    assert abs(dev) <= 0.10


# litgpt tutorials/resource-tables.md (10/20/2023; A100-SXM4-40GB, bitsandbytes 0.41.1, LoRA on q and v, bf16-true,
# micro-batch 1, no checkpointing): "Time 1k iterations" of bnb.nf4 minus that of the 16-bit run, per iteration.
# Both runs draw the same Alpaca samples; what differs is bitsandbytes' dequantization before each 4-bit matmul
# in forward and again for the input gradient. The bandwidth share (planner.compute) is the geometric mean of
# these two rows, so each is held within 15% (7B +10%, 13B -11%).
LITGPT_NF4_OVERHEAD_S = {"llama-2-7b": (3.68 - 2.36) * 60 / 1000, "llama-2-13b": (6.38 - 3.19) * 60 / 1000}


@pytest.mark.parametrize("model", list(LITGPT_NF4_OVERHEAD_S))
def test_qlora_dequantization_time_litgpt(model: str) -> None:
    from planner.build import build_config
    from planner.strategy import Method, Precision
    from planner.timing import step_time

    cfg = build_config(model=model, gpus="1xA100-40G", method=Method.qlora, precision=Precision.bf16_true,
                       lora_targets="q_proj,v_proj", seq_len=512, double_quant=False)
    value = step_time(cfg).breakdown_s["dequantize"]
    dev = report("litgpt resource tables (A100-40GB, bnb 0.41.1)", f"{model} nf4 - 16-bit, s per iteration",
                 LITGPT_NF4_OVERHEAD_S[model], value, "s", "15%")
    assert abs(dev) <= 0.15
