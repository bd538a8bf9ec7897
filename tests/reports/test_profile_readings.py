"""`profile dry-run`, `profile run` and `profile calibrate` compare reading by reading (planner/memory.py: allocated
<= reserved <= device): live tensors with the allocated reading, a GPU run's allocator and driver peaks with the
reserved and device ones. On a GPU plan the device reading adds the CUDA context, NCCL's buffers and the allocator's
reserve, which neither fake tensors nor max_memory_allocated hold."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from planner.build import build_config
from planner.calibration import DEFAULT
from planner.memory import NOT_ALLOCATED_ITEMS, memory_per_gpu
from planner.strategy import Method
from profiler.calibrate import Profile, errors
from reports.profile_report import dry_run_json, run_json


def _gpu_plan():  # two ranks so NCCL's buffers count too
    return build_config(model="llama-3.2-1b", gpus="2xH100", method=Method.lora, seq_len=512)


def test_allocated_dict_leaves_out_what_lies_outside_the_tensors() -> None:
    mem = memory_per_gpu(_gpu_plan())
    outside = sum(mem.other_items.get(k, 0.0) for k in NOT_ALLOCATED_ITEMS)
    assert outside > 0.5 * 2**30  # the CUDA context alone is 0.5 GiB
    alloc = mem.allocated_dict()
    assert alloc["total"] == round(mem.allocated)
    assert sum(alloc[k] for k in ("weights", "gradients", "optimizer", "activations", "other")) == \
        pytest.approx(alloc["total"], abs=4)
    assert alloc["other"] == pytest.approx(mem.other - outside, abs=1)
    cpu = memory_per_gpu(build_config(model="llama-3.2-1b", gpus="2xCPU", seq_len=512))
    assert cpu.allocated_dict() == cpu.as_dict()


def test_a_dry_run_of_exact_tensors_reads_zero_error_on_a_gpu_plan() -> None:
    pred = memory_per_gpu(_gpu_plan())
    dry = SimpleNamespace(peak_bytes=dict(pred.allocated_dict()), peak_phase="backward", step_peaks_bytes=[1, 2],
                          params_total=1, params_trainable=1, wall_s=1.0)
    data = dry_run_json(dry, pred, "plan")
    assert data["relative_error"]["total"] == 0 and data["relative_error"]["other"] == 0
    assert data["predicted_readings"]["device"] > data["predicted_peak_bytes"]


def test_a_gpu_run_is_compared_reading_by_reading() -> None:
    cfg = _gpu_plan()
    pred = memory_per_gpu(cfg)
    r = pred.readings()
    ranks = [{"rank": k, "peak_allocated_bytes": r["allocated"], "peak_reserved_bytes": r["reserved"],
              "device_used_bytes": r["device"], "peak_rss_bytes": 1, "step_time_s": 1.0, "tokens_per_s": 1.0}
             for k in range(2)]
    real = SimpleNamespace(config=cfg, peak_bytes=r["allocated"], step_time_s=1.0, tokens_per_s=1.0, ranks=ranks,
                           versions={})
    data = run_json(real, pred, None)
    assert data["memory_relative_error"] == 0
    assert all(v["relative_error"] == 0 for v in data["readings"].values())
    # calibration reads the same pair: exact tensors are no error, whatever the context and NCCL add
    assert errors([Profile(config=cfg, peak_bytes=r["allocated"], step_time_s=None)], DEFAULT).memory == (0.0,)
