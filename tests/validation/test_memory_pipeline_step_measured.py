"""DeepSpeed's pipeline engine at ZeRO-0, measured: what backward holds, what the gradient reduction copies and what the
step adds, on each of 2 stages, against the planner's items (planner/engines/zero.py gradients, end_items /
zero0_reduce_copy_bytes, zero0_step_items / bf16_optimizer_step_items).

One torchrun of 2 gloo ranks (pipeline_step_probe.py, each case in processes forked for it): pp 2, dp 1, the engine as
ftplan's runner builds it (runner/parallel/pipeline.py build_engine, the Trainer's two parameter groups), the 3.7M
Llama of zero_step_probe.py, one micro-batch, live tensor bytes counted by profiler.tracker on the second step. bf16:
ftplan's emitted ds_config, so BF16_Optimizer (runtime/engine.py `_do_optimizer_sanity_check`); fp32: the ds_config the
runner trains with on the CPU, the client AdamW unwrapped. The client's kernel is forced as in
test_memory_zero_adamw_step_measured.py: foreach, a GPU's default, is planned on 2xA100-80G; single_tensor on 2xCPU.

Checked per stage: the stage's trained elements are the planner's (planner.states.stage_params); BF16_Optimizer's
accumulators are bf16, one element per trained element (BF16_ACCUMULATOR_BYTES: the ds_config sets no grad_accum_dtype),
and its fp32 partition is the whole stage at dp 1 (partitioned over the stage's data-parallel group, not the 2 ranks);
the gradients held at the end of backward (the bf16 `.grad`s backward adds, with the accumulators allocated up front)
are the planner's; the reduction's rise over the end of backward is its flat copy; and the step's rise over its start
is the planner's step item. Tolerance 1% (the planner steps the whole trained partition as the weight-decay group,
which leaves out the stage's norms: 1,024 or 1,280 elements); the single-tensor loop's temporaries are the stage's own
largest tensors (planner.torch_adamw.single_tensor_temporary_bytes over the stage: the head's pair on the last, a
down_proj's three on the first, whose embedding has no head after it).

Measured (this file's -s print), stage 0 / stage 1 (1,844,224 / 1,844,480 trained elements), equal to the planner's
where not said:
- bf16 (BF16_Optimizer): accumulators torch.bfloat16; gradients held 7,376,896 / 7,377,920 B (the bf16 `.grad`s and
  the accumulators, 4 bytes per element; the planner counted 6 before, fp32 accumulators: 11,065,344 / 11,066,880 B);
  the reduction's copy 3,688,448 / 3,688,960 B (the two groups' accumulators concatenated; not counted before); the
  step 14,749,700 / 14,750,724 B with foreach (the fp32 gradient partition and `exp_avg_sq_sqrt` over the weight-decay
  group; planner 14,753,792 / 14,755,840, +0.03%) and 22,122,500 / 22,123,524 B with the single-tensor loop (planner
  +0.04%); before, the planner had no step item for --pp > 1.
- fp32 (the client AdamW): gradients held 7,376,896 / 7,377,920 B; the reduction's copy the same (the parameters'
  gradients concatenated, one bucket); the step 7,372,800 B with foreach on both stages (the weight-decay group's sqrt;
  planner 7,376,896 / 7,377,920) and 2,113,536 / 2,801,664 B single-tensor (3 x the 688 x 256 down_proj on the first
  stage, 2 x the head + the down_proj before it on the last: planner 2,801,664 B for both before the stage's own
  tensors were walked, 2,113,536 / 2,801,664 B since).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torchrun_cases import run_cases

from planner.engines import zero
from planner.gpus import parse_gpus
from planner.states import stage_params

PROBE = Path(__file__).with_name("pipeline_step_probe.py")
CASES = [f"{precision}-{kernel}" for precision in ("bf16", "fp32") for kernel in ("foreach", "single_tensor")]
CLUSTER = {"foreach": "2xA100-80G", "single_tensor": "2xCPU"}  # the device whose default kernel the probe forced


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Every case from one torchrun (each rank imports the libraries once and forks a process per case)."""
    pytest.importorskip("deepspeed")
    return run_cases(PROBE, {case.replace("-", ":"): case for case in CASES}, {"DS_ACCELERATOR": "cpu"},
                     timeout_s=900)


def planned(case: str):  # noqa: ANN201 (a TrainConfig; the probe module builds it)
    from dataclasses import replace

    from pipeline_step_probe import plan

    precision, kernel = case.split("-")
    return replace(plan(precision), cluster=parse_gpus(CLUSTER[kernel]))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_pipeline_stage_gradients_reduction_and_step(measured: dict[str, dict], case: str) -> None:
    cfg = planned(case)
    bf16 = case.startswith("bf16")
    for rank, got in enumerate(measured[case]["ranks"]):
        assert got["stage"] == rank
        sp = stage_params(cfg, first=rank == 0)
        trained = sp.trainable
        assert trained == got["numel"]
        assert got["optimizer"] == ("BF16_Optimizer" if bf16 else "AdamW")
        assert len(got["client_groups"]) == 2 and sum(got["client_groups"]) == got["numel"]  # the Trainer's groups
        held = got["after_backward"] - got["before"]
        if bf16:
            assert got["accumulator_dtype"] == "torch.bfloat16"
            assert got["accumulator_bytes"] == pytest.approx(zero.BF16_ACCUMULATOR_BYTES * trained, abs=8)
            assert got["fp32_partition_numel"] == pytest.approx(trained, abs=4)  # dp 1: the whole stage, not half
            held += got["accumulator_bytes"]  # allocated with the optimizer, before the first forward
        grads, _ = zero.gradients(cfg, trained, cfg.dp)
        reduce_copy = zero.end_items(cfg, sp).get("ZeRO-0 gradient all-reduce flat copy", 0.0)
        step = zero.step_items(cfg, trained, cfg.dp, 0.0, sp)
        reduce_rise = got["reduce_peak"] - got["after_backward"]
        step_rise = got["step_peak"] - got["step_start"]
        print(f"[measured] pipeline {case} stage {rank}: gradients held {held:,} B (planner {grads:,.0f}), "
              f"reduction {reduce_rise:,} B (planner {reduce_copy:,.0f}), step {step_rise:,} B (planner "
              f"{sum(step.values()):,.0f}: {next(iter(step), '-')}; peak label {got['peak_label']})")
        assert grads == pytest.approx(held, rel=0.01)
        assert reduce_copy == pytest.approx(reduce_rise, rel=0.01)
        assert sum(step.values()) == pytest.approx(step_rise, rel=0.01)
