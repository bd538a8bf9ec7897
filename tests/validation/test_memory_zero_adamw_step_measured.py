"""ZeRO's step with the client's torch AdamW (and ZeRO-0's gradient all-reduce at the end of backward), measured: the
optimizer ftplan's ds_config leaves to the Trainer without offload (planner/configs/ds_config.py needs_ds_optimizer),
stepped one parameter group at a time over its flat fp32 partition beside that group's fp32 gradient
(stage_1_and_2.py `_optimizer_step`; stage3.py per sub-group); at ZeRO-0 over whole tensors, itself in fp32 and under
FP16_UnfusedOptimizer in bf16 (planner/engines/zero.py zero0_step_items).

One torchrun of 2 gloo ranks (zero_adamw_step_probe.py, each case in processes forked for it: DeepSpeed 0.19.8, CPU
accelerator, ftplan's own ds_config, the 3.7M-parameter Llama of zero_step_probe.py, the Trainer's two parameter
groups as ftplan's runner and profiler worker build them, or one group of every parameter, which is what a LoRA
model's Trainer groups come to once DeepSpeed drops the empty one), live tensor bytes counted by profiler.tracker on
the second step. The client's kernel is forced: `foreach` is what torch picks on a GPU (`_default_to_fused_or_foreach`),
so the planner is asked for a GPU plan (planner/torch_adamw.py deepspeed_client_kernel: foreach); `single_tensor`,
the CPU's default loop, for a CPU plan. Checked: the step's peak lies inside the client's step (with one group,
foreach's moment ties the gradient conversion's, which the tracker labels first), and its rise over the end of
backward equals the planner's step item (planner/engines/zero.py step_items), for ZeRO-0, ZeRO-2 and ZeRO-3 in fp32
and bf16; with one group, less the contiguous gradient partition its step frees (zero.py
contiguous_partition_freed_bytes, the rule a LoRA plan gets). ZeRO-1: the planner holds the gradients whole
(zero.gradients) and its step items subtract those outside the partition, so its held gradients plus its step item
are compared with the step's peak over the live bytes before forward. Tolerance 1%: the planner's group is the whole
trained partition, the measured one the weight-decay group's (the norms' 1,152 elements per rank in the other group);
and one reduce bucket's fp32 bytes: the contiguous gradient storage is 7,639,040 B in fp32 where the partition is
7,377,408 B (65,408 elements more, within a 65,536-element bucket), so a one-group rise is that much lower.

Measured (this file's -s print; 7,372,800 B is the weight-decay group's fp32 partition per rank): ZeRO-2 and ZeRO-3,
bf16 and fp32, the Trainer's groups: foreach 2 partitions (the fp32 gradient and `exp_avg_sq_sqrt`), the single-tensor
loop 3 (and the sqrt's quotient): the norms' gradients keep ZeRO-2's contiguous partition through the weight-decay
group's step. One group (ZeRO-2): 1 and 2 in fp32 (the flat copy replaces the freed contiguous partition), 1.5 and
2.5 in bf16 (the 16-bit partition freed). ZeRO-0, whole tensors: fp32 foreach 14,745,600 B (the weight-decay group's
sqrt); bf16 foreach 29,500,416 B and single-tensor 17,556,480 B, with FP16_UnfusedOptimizer's 14,754,816 B of fp32
gradients, which backward does not hold. ZeRO-1 (ftplan's contiguous_gradients: the boundary's reduction copies the
partition's gradients into the contiguous buffer, stage_1_and_2.py `reduce_ipg_grads`, the others leave with the
buckets) held 7,377,920 B at the end of backward in fp32 (3,688,960 B in bf16; one group 7,639,040 and 3,819,520 B),
one gradient partition, and rose at the step exactly as ZeRO-2 did in all eight cases (foreach / single-tensor:
14,745,608 / 22,118,408 B under the Trainer's groups; one group 7,377,416 / 14,493,192 B fp32, 11,066,120 / 18,312,712
B bf16). The planner's held gradients plus step item: +0.04% to +0.05% under the Trainer's groups; one group -1.74%
fp32 foreach, -0.88% bf16 foreach (the contiguous buffer's extra elements, as above), 0.00% single-tensor. Before
contiguous_partition_freed_bytes applied at ZeRO-1, one group read +47.4% / +33.3% (fp32) and +23.9% / +16.7% (bf16).

ZeRO-0's reduction (DeepSpeedEngine.backward -> `_backward_epilogue` -> `allreduce_gradients` ->
`buffered_allreduce_fallback`, wrapped on the instance by the probe): it reduces the parameters' own gradients (fp32;
bf16 under FP16_UnfusedOptimizer), the 3.7M Llama's all in one bucket, and its rise over its start is their flat copy:
14,754,816 B in fp32 and 7,377,408 B in bf16, freed when it returns (planner/engines/zero.py end_items /
zero0_reduce_copy_bytes: equal; the planner had no item at pp 1 before). In fp32 with foreach it is the run's peak,
29,509,640 B over the live bytes before forward, 9,224 B above the client step's 29,500,416 B.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from torchrun_cases import run_cases

from planner.deepspeed_sizes import reduce_bucket_elements
from planner.engines import zero
from planner.gpus import parse_gpus
from planner.models import spec_from_hf_config
from planner.params import total_params
from planner.states import stage_params
from planner.strategy import Engine, Method, Precision, TrainConfig, ZeroStage

PROBE = Path(__file__).with_name("zero_adamw_step_probe.py")
CASES = [f"zero{stage}-{precision}-{kernel}-trainer" for stage in (1, 2, 3) for precision in ("fp32", "bf16")
         for kernel in ("foreach", "single_tensor")] + \
    [f"zero{stage}-{precision}-{kernel}-one" for stage in (1, 2) for precision in ("fp32", "bf16")
     for kernel in ("foreach", "single_tensor")] + \
    ["zero0-fp32-foreach-trainer", "zero0-bf16-foreach-trainer", "zero0-bf16-single_tensor-trainer"]
CLUSTER = {"foreach": "2xA100-80G", "single_tensor": "2xCPU"}  # the device whose default kernel the probe forced


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Every case from one torchrun (each rank imports the libraries once and forks a process per case)."""
    pytest.importorskip("deepspeed")
    cases = {}
    for name in CASES:
        stage, precision, kernel, groups = name.split("-")
        cases[f"{stage.removeprefix('zero')}:{precision}:{kernel}:{groups}"] = name
    return run_cases(PROBE, cases, {"DS_ACCELERATOR": "cpu"}, timeout_s=900)


def planned(case: str) -> TrainConfig:
    from zero_step_probe import CONFIG

    stage, precision, kernel, _ = case.split("-")
    spec = spec_from_hf_config({"model_type": "llama", **CONFIG}, name="probe-llama")
    return TrainConfig(model=spec, cluster=parse_gpus(CLUSTER[kernel]), method=Method.full, engine=Engine.deepspeed,
                       zero=ZeroStage(int(stage.removeprefix("zero"))),
                       precision=Precision.fp32 if precision == "fp32" else Precision.bf16_mixed)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_step_peak_is_the_fp32_gradient_and_the_kernels_temporaries(measured: dict[str, dict], case: str) -> None:
    got = measured[case]
    one_group = case.endswith("-one")
    # one group, foreach: the client's moment ties the gradient conversion's, which the tracker labels first
    assert got["peak_label"] == "client step" or (one_group and "-foreach-" in case)
    cfg = planned(case)
    p = total_params(cfg.model)
    assert p == got["numel"]
    items = zero.step_items(cfg, p, 2, 0.0)
    predicted = sum(items.values())
    if one_group:  # the planner's one-group rule (a LoRA model's): its step frees the contiguous gradient partition
        predicted -= zero.contiguous_partition_freed_bytes(replace(cfg, method=Method.lora), p / 2)
    baseline, over = got["after_backward"], "the end of backward"
    if case.startswith("zero1-"):  # the planner holds ZeRO-1's gradients whole and its step items subtract all but
        # the partition, which is all DeepSpeed still holds at the end of a boundary's backward: compare the totals
        predicted += zero.gradients(cfg, p, 2)[0]
        baseline, over = got["before"], "the live bytes before forward"
    rise = got["step_peak"] - baseline
    print(f"[measured] DeepSpeed {case}, 2 ranks: step peak {rise:,} B over {over}, planner "
          f"{predicted:,.0f} B ({predicted / rise - 1:+.2%}, {next(iter(items))})")
    assert predicted == pytest.approx(rise, rel=0.01, abs=4 * reduce_bucket_elements(cfg.model))


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("zero0-")])
def test_zero0_wraps_the_client_by_precision_and_holds_16_bit_gradients(measured: dict[str, dict], case: str) -> None:
    """ZeRO-0 steps the client itself in fp32 and under FP16_UnfusedOptimizer in bf16 (runtime/engine.py
    `_do_optimizer_sanity_check`: DDP_BFLOAT16 -> `_configure_fp16_optimizer`), whose fp32 gradients exist only in its
    step: backward leaves the 16-bit gradients alone (planner/engines/zero.py gradients)."""
    got = measured[case]
    assert got["optimizer"] == ("AdamW" if "-fp32-" in case else "FP16_UnfusedOptimizer")
    cfg = planned(case)
    held, _ = zero.gradients(cfg, total_params(cfg.model), 2)
    print(f"[measured] DeepSpeed {case}, 2 ranks: {got['after_backward'] - got['before']:,} B held at the end of "
          f"backward, planner {held:,.0f} B")
    assert held == pytest.approx(got["after_backward"] - got["before"], rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("zero0-")])
def test_zero0_reduction_copies_the_gradients_flat(measured: dict[str, dict], case: str) -> None:
    """ZeRO-0 at pp 1 all-reduces the parameters' own gradients at the end of the boundary's backward, in buckets of
    500M elements that `allreduce_bucket` concatenates into a new tensor (runtime/engine.py `allreduce_no_retain`,
    `self.flatten(bucket)`), freed when the reduction returns (planner/engines/zero.py zero0_reduce_copy_bytes)."""
    got = measured[case]
    cfg = planned(case)
    sp = stage_params(cfg, first=True)
    reduced = got["reduced"]
    assert reduced["dtypes"] == (["torch.float32"] if "-fp32-" in case else ["torch.bfloat16"])
    assert reduced["bytes"] == zero.gradients(cfg, sp.trainable, 2)[0]  # every gradient, in one bucket
    planned_copy = zero.end_items(cfg, sp).get("ZeRO-0 gradient all-reduce flat copy", 0.0)
    rise = got["reduce_peak"] - got["reduce_start"]
    print(f"[measured] DeepSpeed {case}, 2 ranks: the gradient all-reduce rose {rise:,} B over its start "
          f"({got['reduce_peak'] - got['before']:,} B over the live bytes before forward; the step's peak "
          f"{got['step_peak'] - got['before']:,} B), planner {planned_copy:,.0f} B")
    assert got["reduce_end"] == got["reduce_start"]  # the copy is gone when the reduction returns
    assert planned_copy == pytest.approx(rise, rel=0.01)
