"""`ftplan profile calibrate --device`: the fits that turn measured points into the CPU device's constants."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cli_helpers import run

from planner.gpus import gpu_from_name, with_device_fit
from profiler.device_fit import (
    GATHER_SIZES,
    NARROW_COLS,
    SINGLE_TENSOR_SHAPES,
    DeviceFit,
    _line_fit,
    device_fit_from_dict,
    fit_alpha_beta,
    fit_narrow_inner,
    fit_single_tensor,
    gemm_shapes,
    median_fit,
    narrow_inner_shapes,
    rate_share,
)


def test_alpha_beta_recovered_from_exact_points() -> None:
    alpha, beta = 300e-6, 40e6
    points = [(n, alpha + n / beta) for n in (4096 * 4**k for k in range(7))]
    a, b = fit_alpha_beta(points)
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(beta, rel=1e-6)


def test_gemm_curve_line_fit_is_exact_on_a_line() -> None:
    """t / (2kn) = m / R + m0 / R: slope 1 / R, intercept m0 / R."""
    rate, m0 = 8e9, 3.0
    slope, intercept = _line_fit([16.0, 64.0, 256.0, 1024.0], [(m + m0) / rate for m in (16, 64, 256, 1024)])
    assert 1 / slope == pytest.approx(rate, rel=1e-9) and intercept / slope == pytest.approx(m0, rel=1e-6)


def test_calibrate_without_profiles_or_device_is_one_line(capsys, monkeypatch, tmp_path) -> None:
    code, _, err = run(capsys, monkeypatch, "profile", "calibrate", "--out", str(tmp_path / "c.json"))
    assert code == 2 and "no profiles given" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.json").exists()


def test_rate_share_of_a_gemm() -> None:
    assert rate_share(100e9, 50e9, 4.0) == pytest.approx(0.5)
    assert rate_share(100e9, 50e9, 1.0) == 1.0  # faster than the rate: no penalty


def test_device_fit_file_sets_the_cpu_entry() -> None:
    cpu = gpu_from_name("CPU")
    fit = {"host_op_s": 4e-6, "peak_fp32_flops_per_s": 60e9, "gemm_narrow_cols": [[8, 0.2], [16, 0.9]],
           "dropout_values_per_s": 5e7, "zero3_module_s": 1e-3, "busy_comm_factor": 1.5}
    got = with_device_fit(cpu, fit)
    assert (got.host_op_s, got.peak_fp32_flops_per_s, got.peak_tf32_flops_per_s) == (4e-6, 60e9, 60e9)
    assert got.gemm_narrow_cols == ((8, 0.2), (16, 0.9))
    assert (got.dropout_values_per_s, got.zero3_module_host_s) == (5e7, 1e-3)
    assert got.busy_comm_factor == 1.5
    assert got.gemm_half_rate_rows == cpu.gemm_half_rate_rows  # keys the file lacks keep the entry's value


def test_device_fit_sets_gloo_gather_and_scatter_times() -> None:
    cpu = gpu_from_name("CPU")
    got = with_device_fit(cpu, {"allgather_points": [[2**20, 2e-3], [2**22, 6e-3]],
                                "reduce_scatter_points": [[2**20, 3e-3]]})
    assert got.allgather_points == ((2**20, 2e-3), (2**22, 6e-3)) and got.reduce_scatter_points == ((2**20, 3e-3),)
    assert with_device_fit(cpu, {"host_op_s": 4e-6}).allgather_points == cpu.allgather_points  # an older file


def _synthetic_fit(slow: float, busy: float) -> DeviceFit:
    """A CPU fit whose every time follows known constants (R 100 GFLOP/s, m0 24 rows, alpha 0.4 ms, B 1 GB/s), all
    times multiplied by `slow` (a slow spell of the machine)."""
    host, rate, m0 = 3e-6, 1e11, 24.0
    gemms = tuple((m, k, n, slow * (host + 2 * k * n * (m + m0) / rate))
                  for m, k, n in gemm_shapes() + narrow_inner_shapes())
    allreduce = tuple((b, slow * (4e-4 + b / 1e9)) for b in (4096 * 4**i for i in range(7)))
    gather = tuple((b, slow * b / 5e8) for b in GATHER_SIZES)
    return DeviceFit(host_op_s=slow * host, peak_fp32_flops_per_s=0.0, gemm_half_rate_rows=0.0, gemm_narrow_cols=(),
                     dropout_values_per_s=1e8 / slow, hbm_bytes_per_s=1e10 / slow, collective_alpha_s=0.0,
                     intra_node_bytes_per_s=0.0, zero3_module_s=slow * 1e-3, fsdp_unit_s=slow * 8e-4,
                     busy_comm_factor=busy, gemm_points=gemms, allreduce_points=allreduce, allgather_points=gather,
                     reduce_scatter_points=gather, sync_call_s=slow * 1e-3,
                     sdpa_points=((128, 64, slow * 4e-9, slow * 12e-9), (512, 64, slow * 3e-9, slow * 8e-9)),
                     optimizer_bytes_per_s=1.2e10 / slow, lora_linear_host_s=slow * 1.3e-4,
                     adamw_single_tensor_points=_single_tensor_points(slow))


def _single_tensor_points(slow: float, per_tensor_s: float = 3.5e-5, rate: float = 1.4e10) -> tuple:
    """The single-tensor step's shapes timed as tensors x c + 92 counted bytes per value / R."""
    return tuple((n, v, slow * (n * per_tensor_s + n * v * 92 / rate)) for n, v in SINGLE_TENSOR_SHAPES)


def test_single_tensor_step_fit_recovers_its_two_terms() -> None:
    """t = tensors x c + bytes / R: the large tensors set R, the tiny ones c; a third shape on the same line leaves
    both; a negative per-tensor cost (bytes alone explain the times) is dropped."""
    assert fit_single_tensor(_single_tensor_points(1.0)) == pytest.approx((1.4e10, 3.5e-5))
    three = (*_single_tensor_points(1.0), (96, 2**14, 96 * 3.5e-5 + 96 * 2**14 * 92 / 1.4e10))
    assert fit_single_tensor(three) == pytest.approx((1.4e10, 3.5e-5))
    rate, per_tensor = fit_single_tensor(_single_tensor_points(1.0, per_tensor_s=0.0))
    assert rate == pytest.approx(1.4e10) and per_tensor == pytest.approx(0.0, abs=1e-12)


def test_median_fit_ignores_one_slow_pass() -> None:
    """Three passes, one in a slow spell (every time 1.5x) with a high busy factor: the median fit is the quiet
    passes' fit, the curves refitted to the median points (`--passes`, rank_order.py --fit-each-round)."""
    fit = median_fit([_synthetic_fit(1.0, 1.3), _synthetic_fit(1.5, 2.4), _synthetic_fit(1.0, 1.4)])
    assert fit.peak_fp32_flops_per_s == pytest.approx(1e11, rel=1e-6)
    assert fit.gemm_half_rate_rows == pytest.approx(24.0, rel=1e-6)
    assert fit.collective_alpha_s == pytest.approx(4e-4, rel=1e-6)
    assert fit.intra_node_bytes_per_s == pytest.approx(1e9, rel=1e-6)
    assert fit.busy_comm_factor == pytest.approx(1.4)
    assert fit.sync_call_s == pytest.approx(1e-3)
    assert fit.zero3_module_s == pytest.approx(1e-3)
    assert fit.allgather_points == _synthetic_fit(1.0, 1.0).allgather_points
    assert [n for n, _ in fit.gemm_narrow_cols] == list(NARROW_COLS)
    assert all(share == pytest.approx(1.0) for _, share in fit.gemm_narrow_cols)
    assert [k for k, _ in fit.gemm_narrow_inner] == list(NARROW_COLS)  # LoRA's k = r GEMMs, their own shares
    assert all(share == pytest.approx(1.0) for _, share in fit.gemm_narrow_inner)
    assert fit.sdpa_points == _synthetic_fit(1.0, 1.0).sdpa_points  # per point, forward and backward
    assert fit.optimizer_bytes_per_s == pytest.approx(1.2e10)
    assert fit.lora_linear_host_s == pytest.approx(1.3e-4)
    # the single-tensor step refitted to the median points: the quiet passes' terms
    assert (fit.adamw_single_tensor_bytes_per_s, fit.adamw_single_tensor_s) == pytest.approx((1.4e10, 3.5e-5))
    assert fit.adamw_single_tensor_points == _single_tensor_points(1.0)
    older = median_fit([replace(_synthetic_fit(1.0, 1.3), adamw_single_tensor_points=())] * 2)
    assert older.adamw_single_tensor_points == () and older.adamw_single_tensor_s == 0.0  # fits from before


def test_median_fit_keeps_attention_points_of_the_passes_that_have_them() -> None:
    """A pass from before the SDPA points (none) leaves the others' medians; none at all: none."""
    older = replace(_synthetic_fit(1.0, 1.3), sdpa_points=())
    fit = median_fit([older, _synthetic_fit(1.0, 1.3), _synthetic_fit(2.0, 1.3)])
    assert [p[:2] for p in fit.sdpa_points] == [(128, 64), (512, 64)]
    assert [p[2:] for p in fit.sdpa_points] == [pytest.approx((6e-9, 18e-9)), pytest.approx((4.5e-9, 12e-9))]
    assert median_fit([older, older]).sdpa_points == ()


def test_narrow_inner_share_is_the_row_rate_reached() -> None:
    """A k = 8 GEMM that takes 5x its time at the row rate R m/(m+m0) reached a share of 0.2; a fit made before
    these points were measured has none (the CPU entry's shares then stand)."""
    rate, m0 = 1e11, 24.0
    pts = tuple((512, k, n, (5.0 if k == 8 else 1.0) * 2 * 512 * k * n * (512 + m0) / (512 * rate))
                for _, k, n in narrow_inner_shapes())
    table = dict(fit_narrow_inner(pts, rate, m0, 0.0))
    assert table[8] == pytest.approx(0.2) and table[64] == pytest.approx(1.0)
    assert fit_narrow_inner(tuple((m, k, n, 1e-3) for m, k, n in gemm_shapes()), rate, m0, 0.0) == ()
    assert with_device_fit(gpu_from_name("CPU"), {"gemm_narrow_inner": [[8, 0.2]]}).gemm_narrow_inner == ((8, 0.2),)


def test_device_fit_round_trips_through_its_json_file(tmp_path) -> None:
    fit = _synthetic_fit(1.0, 1.3)
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"ftplan_device_fit": 1, "device": "CPU", **fit.to_dict()}))
    assert device_fit_from_dict(json.loads(path.read_text())) == fit
    # what a plan reads from it: the single-tensor AdamW's fitted terms
    fitted = median_fit([fit, fit])
    gpu = with_device_fit(gpu_from_name("CPU"), json.loads(json.dumps(fitted.to_dict())))
    assert (gpu.adamw_single_tensor_bytes_per_s, gpu.adamw_single_tensor_s) == pytest.approx((1.4e10, 3.5e-5))
