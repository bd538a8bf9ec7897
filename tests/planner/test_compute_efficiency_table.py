"""planner/compute.py's GEMM efficiency by board: the published achieved-matmul figures it keys, and the fallback for
the boards without one."""

from __future__ import annotations

import pytest

from planner.compute import DEFAULT_COMPUTE_EFFICIENCY, FALLBACK_COMPUTE_EFFICIENCY, compute_efficiency
from planner.gpus import GPUS


@pytest.mark.parametrize(("name", "flops_per_s"), [
    ("T4", 24e12),  # NVIDIA forum 264462: cuBLAS fp16 4096^3 "about 24T", power-capped at 70 W
    ("V100-32G", 83e12),  # Markidis et al. 2018: cuBLAS tensor-core GEMM "up to 83 Tflops/s"
])
def test_boards_with_a_published_matmul_rate_take_it(name: str, flops_per_s: float) -> None:
    gpu = GPUS[name]
    assert compute_efficiency(name) * gpu.peak_fp16_flops_per_s == pytest.approx(flops_per_s, rel=2e-3)


def test_boards_without_one_take_the_fallback() -> None:
    for name in ("A10G", "L40S", "RTX3090", "RTX4090"):
        assert name not in DEFAULT_COMPUTE_EFFICIENCY and compute_efficiency(name) == FALLBACK_COMPUTE_EFFICIENCY
    # a device fit's or a calibration's figure replaces the table's
    assert compute_efficiency("T4", fitted=0.5) == 0.5 and compute_efficiency("T4", calibrated=0.4, fitted=0.5) == 0.4
