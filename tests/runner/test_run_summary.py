"""runner.summary pairs each measured figure with the planner's figure for the same quantity (made-up measurements),
and runner.memory_probe measures them on a small torch model in this process."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from planner.build import build_config
from planner.calibration import Calibration
from planner.memory import memory_per_gpu
from planner.strategy import Method, Precision
from planner.timing import step_time
from runner.summary import WARMUP_STEPS, comparison, predicted_memory, time_model_basis


def _cfg(gpus: str = "2xCPU", **kw):
    kw = {"method": Method.full, "zero": 2, "precision": Precision.fp32, "micro_batch": 8, "seq_len": 64, **kw}
    return build_config(model="llama-2-7b", gpus=gpus, **kw)


def _rank(rank: int, *, peak: int, steps: int = 8, width: int = 64, tensor_steps: int = 3, cuda: bool = False,
          step_s: float = 2.0) -> dict:
    return {"rank": rank, "tensor_source": "test", "peak_tensor_bytes": peak, "tensor_steps": tensor_steps,
            "rss_baseline_bytes": 500 * 2**20, "rss_peak_bytes": 800 * 2**20 + rank * 2**20,
            "rss_peak_since_baseline": True,
            "cuda_reserved_peak_bytes": peak + 2**30 if cuda else None,
            "cuda_device_used_bytes": peak + 2**31 if cuda else None,
            "cuda_non_torch_bytes": 600 * 2**20 if cuda else None,
            "step_times_s": ([9.0] * WARMUP_STEPS + [step_s] * steps)[:steps],
            "step_padded_tokens": [8 * width] * steps, "step_max_width": [width] * steps}


def test_cpu_prediction_is_all_tensors() -> None:
    pred = predicted_memory(_cfg())
    assert pred.context_bytes == 0 and pred.allocator_reserve_bytes == 0
    assert pred.tensor_bytes == pytest.approx(memory_per_gpu(_cfg()).total)


def test_gpu_prediction_splits_off_the_planners_context_and_reserve_items() -> None:
    cfg = _cfg("8xA800")
    pred, mem = predicted_memory(cfg), memory_per_gpu(cfg)
    assert pred.context_bytes == pytest.approx(mem.other_items["CUDA context and workspaces"]
                                               + mem.other_items["NCCL communicator buffers"])
    assert pred.allocator_reserve_bytes == pytest.approx(mem.other_items["allocator reserve"])
    assert pred.tensor_bytes + pred.allocator_reserve_bytes + pred.context_bytes == pytest.approx(mem.total)


@pytest.mark.parametrize(("gpu", "cal", "basis"), [
    ("CPU", Calibration(), "placeholder"),
    ("A800", Calibration(), "published"),
    ("H100", Calibration(), "published"),
    ("CPU", Calibration(compute_efficiency=0.05, key=(("device", "CPU"),)), "calibration"),
    ("CPU", Calibration(compute_efficiency=0.5, key=(("device", "A800"),)), "placeholder"),  # another device's
    ("MI300X", Calibration(), "placeholder"),  # not in the efficiency table: the fallback is no published figure
])
def test_time_model_basis(gpu: str, cal: Calibration, basis: str) -> None:
    assert time_model_basis(gpu, cal) == basis


def test_cpu_comparison_takes_the_most_loaded_rank_and_times_after_warm_up() -> None:
    cfg = _cfg()
    s = comparison(cfg, [_rank(0, peak=100), _rank(1, peak=120)], on_cuda=False)
    assert s["peak_tensor_bytes_measured"] == 120 and s["peak_tensor_bytes_per_rank"] == [100, 120]
    assert s["peak_tensor_bytes_predicted"] == round(memory_per_gpu(cfg).total)
    assert s["rss_above_baseline_bytes"] == 301 * 2**20
    assert s["steps_timed"] == 8 - WARMUP_STEPS and s["step_time_s_median_measured"] == 2.0
    assert s["step_time_s_predicted"] == pytest.approx(step_time(cfg).step_time_s)
    assert s["tokens_per_s_measured"] == pytest.approx(2 * 8 * 64 / 2.0)  # padded tokens of both ranks per step
    assert s["time_model_calibrated"] is False and s["time_model_basis"] == "placeholder"
    assert "cuda_reserved_peak_bytes_measured" not in s and "device_used_bytes_measured" not in s
    assert s["measured_tokens_per_s"] == s["tokens_per_s_measured"]


def test_prediction_is_made_at_the_padded_width_that_ran() -> None:
    cfg = _cfg()
    s = comparison(cfg, [_rank(0, peak=100, width=20), _rank(1, peak=100, width=20)], on_cuda=False)
    narrow = replace(cfg, seq_len=20)
    assert s["seq_len_memory_measured"] == 20 and s["seq_len_time_measured"] == 20
    assert s["peak_tensor_bytes_predicted"] == round(memory_per_gpu(narrow).total)
    assert s["step_time_s_predicted"] == pytest.approx(step_time(narrow).step_time_s)


def test_cuda_rows_pair_reserved_driver_and_context_with_the_planners_items() -> None:
    cfg = _cfg("2xA800")
    pred = predicted_memory(cfg)
    s = comparison(cfg, [_rank(0, peak=10 * 2**30, cuda=True, tensor_steps=8),
                         _rank(1, peak=11 * 2**30, cuda=True, tensor_steps=8)], on_cuda=True)
    assert s["peak_tensor_bytes_predicted"] == round(pred.tensor_bytes)
    assert s["cuda_reserved_peak_bytes_measured"] == 12 * 2**30
    assert s["cuda_reserved_peak_bytes_predicted"] == round(pred.tensor_bytes + pred.allocator_reserve_bytes)
    assert s["device_used_bytes_predicted"] == round(memory_per_gpu(cfg).total)
    # outside the allocator: the CUDA context and NCCL's buffers (planner.nccl_memory)
    mem = memory_per_gpu(cfg)
    assert s["cuda_context_bytes_predicted"] == round(mem.other_items["CUDA context and workspaces"]
                                                      + mem.other_items["NCCL communicator buffers"])
    assert s["cuda_non_torch_bytes_measured"] == 600 * 2**20
    assert s["time_model_calibrated"] is True and s["time_model_basis"] == "published"


def test_too_few_steps_to_time() -> None:
    s = comparison(_cfg(), [_rank(0, peak=1, steps=2, tensor_steps=2)], on_cuda=False)
    assert s["steps_timed"] == 0 and s["step_time_s_median_measured"] is None and s["tokens_per_s_measured"] is None
    assert s["steps_warmup"] == 2 and math.isfinite(s["step_time_s_predicted"])


def test_probe_counts_tensors_over_the_tracked_steps_only_and_records_shapes() -> None:
    import torch
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    from runner.memory_probe import MemoryProbe

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 256), torch.nn.Linear(256, 256))
    probe = MemoryProbe(on_cuda=False, rank=0, tracked_steps=2)
    probe.start(model)
    opt = torch.optim.AdamW(model.parameters(), foreach=True)
    probe.step_begin_clock()
    for _ in range(4):
        model(torch.randint(0, 50, (4, 16))).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        probe.step_end()
    assert _get_current_dispatch_mode() is None  # the tracker left after step 2
    with torch.no_grad():
        model.eval()
        model(torch.randint(0, 50, (2, 99)))  # evaluation: not a training step's shape
    probe.stop()
    m = probe.m
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    # weights + gradients + AdamW's two states, at least
    assert m.peak_tensor_bytes >= 4 * param_bytes and m.tensor_steps == 2
    assert m.step_max_width == [16] * 4 and m.step_padded_tokens == [64] * 4 and len(m.step_times_s) == 4
    assert m.rss_peak_bytes >= m.rss_baseline_bytes > 0


def test_calibration_option_round_trips_and_a_bad_file_is_refused_before_anything_runs(tmp_path) -> None:
    from pathlib import Path

    from planner.errors import PlanError
    from runner.train import RunOptions, parse_args, to_argv, validate_inputs

    opts = RunOptions(model_path=Path("m"), data=Path("d.jsonl"), output=tmp_path / "out",
                      calibration=tmp_path / "cal.json")
    assert parse_args(to_argv(Path("plan.json"), opts))[1] == opts
    with pytest.raises(PlanError, match="calibration file .*cal.json does not exist"):
        validate_inputs(_cfg(), opts)
    assert not (tmp_path / "out").exists()


def test_no_recorded_shapes_give_no_token_rate() -> None:
    ranks = [_rank(0, peak=1) | {"step_padded_tokens": [0] * 8, "step_max_width": [0] * 8}]
    s = comparison(_cfg(), ranks, on_cuda=False)
    assert s["tokens_per_s_measured"] is None and s["seq_len_time_measured"] == 64
    assert s["step_time_s_median_measured"] == 2.0
