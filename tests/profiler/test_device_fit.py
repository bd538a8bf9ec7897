"""`ftplan profile calibrate --device`: the fits that turn measured points into the CPU device's constants."""

from __future__ import annotations

import pytest
from cli_helpers import run

from planner.gpus import gpu_from_name, with_device_fit
from profiler.device_fit import _line_fit, fit_alpha_beta, rate_share


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
