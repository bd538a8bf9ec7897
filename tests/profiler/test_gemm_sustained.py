"""The CUDA fit's sustained GEMM phase without a GPU: the settle rule, the window's schedule and steadiness, and the
whole GEMM phase (bursts, settle, windows, fit, file, estimate) run against a simulated board whose clock falls from
boost to a settled value under load and climbs back when idle, as mamf-finder describes a GPU at its power limit
(stas00/ml-engineering compute/accelerator/benchmarks/README.md, "How MAMF and MSMF are defined")."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import run

from planner.device_fit_file import default_path, load, stamped
from planner.gpus import GPUS, with_device_fit
from planner.kernels import wave_efficiency
from profiler.device_fit_cuda import (
    GEMM_ROWS,
    GEMM_SIDES,
    CudaDeviceFit,
    constants_from,
    gemm_dtype,
    measure_gemm_bursts,
    measure_gemms_sustained,
)
from profiler.gemm_sustained import (
    SustainedPhase,
    board_readings,
    settle_reason,
    window_result,
    window_schedule,
)

H100 = GPUS["H100"]
PEAK = H100.peak_bf16_flops_per_s
SUSTAINED_EFF, K0 = 0.753, 150.0  # the planner's Hopper figure (planner/compute.py) and a tile overhead
BOOST_MHZ, SETTLED_MHZ = 1980.0, 1755.0  # H100 SXM's top SM clock; settled so that boost / settled ~ MAMF / MSMF


# ------------------------------------------------------------------------------------------------ pure functions

def test_the_phase_adds_about_a_minute_with_mamf_finders_defaults() -> None:
    phase = SustainedPhase()
    assert (phase.settle_s, phase.warm_s, phase.window_s, phase.sub_windows) == (20.0, 1.0, 2.0, 8)
    assert phase.added_s(len(GEMM_SIDES) * len(GEMM_ROWS)) == pytest.approx(68.0)


@pytest.mark.parametrize(("per_iteration_s", "warm", "per_sub"), [
    (1e-3, 1000, 250),  # 1 ms a product: 1 s warm, 2 s in 8 sub-windows of 0.25 s
    (0.3, 4, 1),  # a slow shape still gets whole iterations, at least one per sub-window
    (2e-6, 500_000, 125_000),  # a fast shape runs many more: the window is a time, not a count
])
def test_window_schedule_fills_the_window_in_seconds(per_iteration_s: float, warm: int, per_sub: int) -> None:
    assert window_schedule(SustainedPhase(), per_iteration_s) == (warm, per_sub)


def test_a_window_that_holds_its_rate_is_steady_and_one_that_falls_is_not() -> None:
    held = window_result([(100, 0.25), (100, 0.26), (100, 0.25), (100, 0.255)] * 2)
    assert held.steady and held.seconds_per_iteration == pytest.approx(0.25375 / 100)
    falling = window_result([(100, 0.25 * (1 + 0.01 * i)) for i in range(8)])  # 1% slower every sub-window
    assert not falling.steady and falling.drop == pytest.approx(0.0373, abs=1e-3)
    jittery = window_result([(100, 0.25), (100, 0.3)] * 4)  # same halves, 20% apart
    assert jittery.drop == pytest.approx(0.0) and not jittery.steady


def test_settle_stops_once_the_clock_stops_dropping_and_not_before_the_floor() -> None:
    phase = SustainedPhase()
    falling = [(0.25 * i, 1.0, 1980.0 - 40 * i) for i in range(1, 12)]
    assert settle_reason(falling, phase) is None
    flat = [*falling, *((falling[-1][0] + 0.25 * i, 1.0, falling[-1][2] - 2.0) for i in range(1, 4))]
    assert settle_reason(flat, phase) == "clock"
    early_flat = [(0.25 * i, 1.0, 1980.0) for i in range(1, 6)]  # 1.25 s: a boosted chip can read stable at first
    assert settle_reason(early_flat, phase) is None
    assert settle_reason([(20.0, 1.0, 1980.0 - 40 * 80)], phase) == "cap"


def test_without_a_clock_reading_settle_waits_for_the_rate_to_level() -> None:
    phase = SustainedPhase()
    decaying = [(0.25 * i, 1.0 + 0.2 * math.exp(-i / 3), None) for i in range(1, 12)]
    assert settle_reason(decaying, phase) is None
    level = [(0.25 * i, 1.0 + 0.2 * math.exp(-i / 3), None) for i in range(1, 40)]
    assert settle_reason(level, phase) == "plateau"


# ------------------------------------------------------------------------------------------- a simulated board

class _Tensor:
    def __init__(self, *shape: int) -> None:
        self.shape = shape


class _Event:
    def __init__(self, board: _Board) -> None:
        self.board, self.at_s = board, 0.0

    def record(self) -> None:
        self.at_s = self.board.now_s

    def elapsed_time(self, end: _Event) -> float:
        return (end.at_s - self.at_s) * 1e3


class _Cuda:
    """torch.cuda as the fit uses it; the NVML readers raise as torch's do without nvidia-ml-py, unless the board
    reports its clock."""

    def __init__(self, board: _Board, clock: bool) -> None:
        self.board, self.clock = board, clock

    def Event(self, enable_timing: bool = True) -> _Event:  # noqa: N802 (torch's name)
        return _Event(self.board)

    def synchronize(self) -> None:
        pass

    def clock_rate(self) -> int:
        if not self.clock:
            raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed or it can't be imported.")
        return round(self.board.clock_mhz())

    def power_draw(self) -> int:
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed or it can't be imported.")


class _Board:
    """A GPU whose matmuls take the planner's GEMM time at the settled clock, scaled by settled / clock; the clock
    falls toward SETTLED_MHZ under load and climbs back toward BOOST_MHZ when idle (time constants in seconds)."""

    bfloat16, float16 = "bfloat16", "float16"

    def __init__(self, *, clock: bool = False, heat_s: float = 0.6, cool_s: float = 0.1) -> None:
        self.now_s, self.heat, self.heat_s, self.cool_s = 0.0, 0.0, heat_s, cool_s
        self.cuda = _Cuda(self, clock)

    def clock_mhz(self) -> float:
        return BOOST_MHZ - (BOOST_MHZ - SETTLED_MHZ) * self.heat

    def randn(self, *shape: int, device: str = "cuda", dtype: str = "") -> _Tensor:
        return _Tensor(*shape)

    empty = randn

    def mm(self, a: _Tensor, b: _Tensor, out: _Tensor | None = None) -> _Tensor:
        (m, k), (_, n) = a.shape, b.shape
        settled_s = 2.0 * m * k * n / (PEAK * wave_efficiency(m, n, H100.sm_count)) * (1 + K0 / k) / SUSTAINED_EFF
        t = settled_s * SETTLED_MHZ / self.clock_mhz()
        self.now_s += t
        self.heat = 1.0 - (1.0 - self.heat) * math.exp(-t / self.heat_s)
        return _Tensor(m, n)

    def sleep(self, seconds: float) -> None:
        self.heat *= math.exp(-seconds / self.cool_s)


# tiny windows keep the simulation fast; the settle rule keeps its real floor, chunk and cap (device seconds)
_PHASE = SustainedPhase(warm_s=0.01, window_s=0.02)


def _measure(board: _Board) -> tuple[tuple, dict]:
    bursts = measure_gemm_bursts(board, board.bfloat16, sleep=board.sleep)
    return bursts, measure_gemms_sustained(board, bursts, _PHASE, board.bfloat16)


@pytest.mark.parametrize("clock", [False, True], ids=["no-nvml", "nvml-clock"])
def test_the_fit_takes_the_settled_rate_and_keeps_the_burst_beside_it(clock: bool) -> None:
    board = _Board(clock=clock)
    bursts, sustained = _measure(board)
    c = constants_from(H100, gemm=sustained["points"], attention=(), copy_bytes_per_s=3.0e12, host_op_s=5e-6,
                       collectives={}, n=1, gemm_bursts=bursts)
    assert c["gemm_efficiency"] == pytest.approx(SUSTAINED_EFF, rel=0.005)
    assert c["gemm_half_rate_inner"] == pytest.approx(K0, rel=0.05)
    # the bursts, each after an idle gap, run near the boost clock: about boost / settled faster
    assert c["gemm_burst_efficiency"] > SUSTAINED_EFF * 1.08
    settle = sustained["settle"]
    assert settle["reason"] == ("clock" if clock else "plateau") and 2.0 <= settle["seconds"] < 20.0
    assert settle["after"]["power_w"] is None and (settle["after"]["sm_clock_mhz"] is not None) == clock
    assert all(w["steady"] for w in sustained["windows"]) and len(sustained["windows"]) == 16


class _SwingingBoard(_Board):
    """A board whose rate swings 10% over a 1 s period and never levels (and reports no clock)."""

    def mm(self, a: _Tensor, b: _Tensor, out: _Tensor | None = None) -> _Tensor:
        start = self.now_s
        got = super().mm(a, b, out)
        self.now_s = start + (self.now_s - start) * (1.0 + 0.1 * math.sin(2 * math.pi * start))
        return got


def test_a_board_that_never_settles_stops_at_the_cap() -> None:
    settled = measure_gemms_sustained(_SwingingBoard(), ((4096, 4096, 4096, 1e-4),),
                                      replace(_PHASE, settle_s=3.0), "bfloat16")["settle"]
    assert settled["reason"] == "cap" and settled["seconds"] >= 3.0


def test_the_gemm_phase_times_the_type_whose_peak_the_fit_divides_by() -> None:
    board = _Board()
    assert gemm_dtype(board, H100) == "bfloat16"
    assert gemm_dtype(board, GPUS["V100-32G"]) == gemm_dtype(board, GPUS["T4"]) == "float16"


def test_readings_are_none_where_torch_cannot_give_them() -> None:
    class _NoReaders:
        cuda = object()

    assert board_readings(_NoReaders()) == dict.fromkeys(
        ("sm_clock_mhz", "power_w", "utilization_pct", "temperature_c"))
    assert board_readings(_Board(clock=True))["sm_clock_mhz"] == BOOST_MHZ


# ------------------------------------------------------------------------------------ the file estimate reads

def _simulated_fit() -> CudaDeviceFit:
    bursts, sustained = _measure(_Board())
    c = constants_from(H100, gemm=sustained["points"], attention=(), copy_bytes_per_s=3.0e12, host_op_s=5e-6,
                       collectives={}, n=1, gemm_bursts=bursts)
    return CudaDeviceFit(device="cuda", gpu="H100", device_name="NVIDIA H100 80GB HBM3", gpus=1,
                         host_op_s=c["host_op_s"], gemm_efficiency=c["gemm_efficiency"],
                         gemm_half_rate_inner=c["gemm_half_rate_inner"], hbm_bytes_per_s=c["hbm_bytes_per_s"],
                         elementwise_bandwidth_fraction=c["elementwise_bandwidth_fraction"],
                         attention_efficiency=c["attention_efficiency"], collective_alpha_s=c["collective_alpha_s"],
                         intra_node_bytes_per_s=c["intra_node_bytes_per_s"], gemm_points=sustained["points"],
                         gemm_burst_efficiency=c["gemm_burst_efficiency"],
                         gemm_burst_half_rate_inner=c["gemm_burst_half_rate_inner"], gemm_burst_points=bursts,
                         gemm_windows=sustained["windows"], gemm_settle=sustained["settle"])


def _tokens_per_s(capsys, monkeypatch, *args: str) -> tuple[float, dict]:
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xH100", "--method", "full",
                         "--zero", "2", "--micro-batch", "2", *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    return data["tokens_per_s"], data


@pytest.fixture()
def fit_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FTPLAN_DEVICE_FIT_DIR", str(tmp_path / "fits"))
    return tmp_path / "fits"


def test_calibrate_writes_the_gpus_fit_and_estimate_reads_it(capsys, monkeypatch, fit_dir: Path) -> None:
    """`ftplan profile calibrate --device` on a CUDA machine (the measurement replaced by the simulated board's) writes
    the fit under its catalog GPU's name; estimate on that GPU then takes the sustained GEMM rate from it."""
    from profiler import device_fit

    monkeypatch.setattr(device_fit, "fit_device", lambda passes=1: _simulated_fit())
    code, out, err = run(capsys, monkeypatch, "profile", "calibrate", "--device")
    assert code == 0, err
    assert "gemm burst" in out and "(sustained)" in out
    loaded = load(default_path("H100"))
    assert loaded.device == "H100" and loaded.values["gemm_timing"] == "sustained"
    gpu = with_device_fit(H100, loaded.constants())
    assert gpu.gemm_efficiency == pytest.approx(SUSTAINED_EFF, rel=0.005)  # the sustained rate, not the burst
    assert loaded.values["gemm_burst_efficiency"] > 1.08 * gpu.gemm_efficiency
    catalog, _ = _tokens_per_s(capsys, monkeypatch, "--device-fit", "none")
    fitted, data = _tokens_per_s(capsys, monkeypatch)
    assert data["device_fit"]["device"] == "H100"
    # the same GEMM efficiency as the catalog's Hopper figure, but a tile overhead (k0 = 150), 3.0 of 3.35 TB/s
    # and 5 us per eager op: slower
    assert fitted < catalog
    assert _tokens_per_s(capsys, monkeypatch, "--device-fit", str(default_path("H100")))[0] == pytest.approx(fitted)


def test_a_fit_written_before_the_sustained_phase_still_reads(capsys, monkeypatch, fit_dir: Path,
                                                              tmp_path: Path) -> None:
    """A file without gemm_timing / gemm_burst_* / gemm_windows / gemm_settle (its gemm_points were bursts, and
    its gemm_efficiency the burst fit): it loads and its constants apply as before."""
    data = stamped(_simulated_fit().to_dict(), device="H100")
    old = {k: v for k, v in data.items() if k not in ("gemm_timing", "gemm_burst_efficiency",
                                                       "gemm_burst_half_rate_inner", "gemm_burst_points",
                                                       "gemm_windows", "gemm_settle")}
    old["gemm_efficiency"] = 0.80
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    gpu = with_device_fit(H100, load(path).constants())
    assert gpu.gemm_efficiency == 0.80 and gpu.hbm_bytes_per_s == 3.0e12
    assert _tokens_per_s(capsys, monkeypatch, "--device-fit", str(path))[1]["device_fit"]["device"] == "H100"
