"""The GEMM rate a training step sustains: the CUDA device fit's settle-then-window phase.

A GPU runs a short matmul burst near its boost clock; under the long saturated load of a training step the board
reaches its power limit and the clock settles lower. ml-engineering's mamf-finder.py (v4) reports the two apart:
the Maximum Achievable Matmul FLOPS (MAMF, a burst after an idle gap) and the Maximum Sustainable Matmul FLOPS
(MSMF), "the highest rate a shape holds without falling, over a timed window on a GPU that has run at full load
long enough for its clock to settle", which its author names the bar for sustained training throughput
(stas00/ml-engineering compute/accelerator/benchmarks/README.md, "How MAMF and MSMF are defined"). On an H200 five
runs gave MSMF 743-746 TFLOP/s against MAMF 843-850; a 0.3 s window read one shape at 745-752, a 4 s window at
728-735 and a 10 s run at 736-739. planner/compute.py takes Hopper's efficiency from that MSMF, so the device fit
measures the same quantity, the same way:

1. Settle: 8192 x 8192 x 8192 bf16 matmuls (fp16 on the boards without bf16 tensor cores) at full load until the SM
   clock stops dropping (three chunks in a row within 5 MHz of the one before: mamf-finder's `settle_clock`), at most
   `settle_s` = 20 s (its `msmf_settle_clock_s`). Without a clock reading (torch reads it through NVML,
   `torch.cuda.clock_rate`, absent without nvidia-ml-py) the throughput's plateau decides instead: the last 4 chunks
   within a 2% coefficient of variation and 1% of the 4 before (mamf-finder's adaptive warm-up). Either way not
   before 2 s: its WARMUP_MIN_SECONDS, "a chip can read stable-but-hot in the first chunks right after a boost".
2. Window, per shape: `warm_s` = 1 s untimed (a GPU keeps some boost for a fraction of a second after a shape
   starts), then `window_s` = 2 s timed in 8 consecutive sub-windows; the rate is the window's FLOPs over its time.
   A shape is steady if its last 4 sub-windows are at most 1% slower than its first 4 and the sub-windows spread
   at most 10% ("at the power cap a 0.25s sub-window jitters by up to ~4% while the window's mean holds").
   The window is a time, not an iteration count: 100 iterations last 13 ms on a fast shape and 1 s on a slow one.

Added to the fit: at most settle_s + shapes x (warm_s + window_s) = 20 + 16 x 3 = 68 s (`SustainedPhase.added_s`).
Elapsed time is read from the device's events, not the host clock, so the loop is the same on a GPU and under the
tests' simulated device (tests/profiler/test_gemm_sustained.py). Clock, power, utilization and temperature come
from torch.cuda's NVML readers where they work, and are recorded as None where they do not (no nvidia-ml-py, no
driver support): the fit never fails for lack of them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

SETTLE_SIDE = 8192  # mamf-finder settle_clock: bf16 8192 x 8192 x 8192
SETTLE_MAX_S = 20.0  # mamf-finder msmf_settle_clock_s ("up to 20s")
SETTLE_MIN_S = 2.0  # mamf-finder WARMUP_MIN_SECONDS
SETTLE_CHUNK_S = 0.25  # the sub-window mamf-finder quotes a jitter for; its settle chunk is 100 mms (0.15 s on H200)
SETTLE_CLOCK_TOLERANCE_MHZ = 5.0  # settle_clock: a chunk "stopped dropping" at clk >= prev_clk - 5
SETTLE_STABLE_CHUNKS = 3  # settle_clock: stable_ticks >= 3
PLATEAU_CHUNKS = 4  # warmup_adaptive: window=4 chunks, cov_thr=0.02, drift_thr=0.01
PLATEAU_COV = 0.02
PLATEAU_DRIFT = 0.01
WINDOW_WARM_S = 1.0  # "1s untimed, then 2s timed, split into 8 consecutive sub-windows"
WINDOW_S = 2.0
WINDOW_SUBS = 8
STEADY_MAX_DROP = 0.01  # "last 4 sub-windows at most 1% slower than its first 4"
STEADY_MAX_SPREAD = 0.10  # "the sub-windows may also spread by at most 10%"


@dataclass(frozen=True, kw_only=True, slots=True)
class SustainedPhase:
    """How long the sustained phase runs (mamf-finder's MSMF defaults); tests set it tiny."""

    settle_s: float = SETTLE_MAX_S
    settle_min_s: float = SETTLE_MIN_S
    chunk_s: float = SETTLE_CHUNK_S
    warm_s: float = WINDOW_WARM_S
    window_s: float = WINDOW_S
    sub_windows: int = WINDOW_SUBS

    def added_s(self, shapes: int) -> float:
        """The most the phase adds to a fit of `shapes` GEMM shapes: the settle cap and every shape's window."""
        return self.settle_s + shapes * (self.warm_s + self.window_s)


@dataclass(frozen=True, kw_only=True, slots=True)
class SustainedWindow:
    """One shape's timed window."""

    seconds_per_iteration: float  # the window's time over its iterations: what the fit takes
    sub_rates: tuple[float, ...]  # iterations per second of each sub-window
    drop: float  # share the last half of the sub-windows is slower than the first half
    spread: float  # (max - min) / median of the sub-windows' rates
    steady: bool


def iterations_for(seconds: float, seconds_per_iteration: float) -> int:
    """Back-to-back iterations that fill `seconds` at `seconds_per_iteration` (at least one)."""
    return max(1, math.ceil(seconds / max(seconds_per_iteration, 1e-12)))


def window_schedule(phase: SustainedPhase, seconds_per_iteration: float) -> tuple[int, int]:
    """(untimed warm iterations, iterations per timed sub-window) for a shape whose burst took
    `seconds_per_iteration`: the window is set in seconds, so a fast shape runs more iterations than a slow one."""
    return (iterations_for(phase.warm_s, seconds_per_iteration),
            iterations_for(phase.window_s / phase.sub_windows, seconds_per_iteration))


def window_result(subs: Sequence[tuple[int, float]]) -> SustainedWindow:
    """A window from its sub-windows' (iterations, seconds): total time over total iterations, and whether the rate
    held (mamf-finder measure_window / confirm_msmf's `steady`)."""
    rates = tuple(n / t for n, t in subs)
    half = len(rates) // 2
    first, last = statistics.fmean(rates[:half] or rates), statistics.fmean(rates[half:])
    drop = 1.0 - last / first
    spread = (max(rates) - min(rates)) / statistics.median(rates)
    total_n, total_t = sum(n for n, _ in subs), sum(t for _, t in subs)
    return SustainedWindow(seconds_per_iteration=total_t / total_n, sub_rates=rates, drop=drop, spread=spread,
                           steady=drop <= STEADY_MAX_DROP and spread <= STEADY_MAX_SPREAD)


def settle_reason(chunks: Sequence[tuple[float, float, float | None]], phase: SustainedPhase) -> str | None:
    """Why the settle loop may stop after `chunks` of (elapsed seconds, rate, SM clock MHz or None), or None to go
    on: "clock" (it stopped dropping), "plateau" (no clock reading: the rate levelled), "cap" (settle_s)."""
    if not chunks:
        return None
    elapsed = chunks[-1][0]
    if elapsed >= phase.settle_s:
        return "cap"
    if elapsed < phase.settle_min_s:
        return None
    clocks = [c for _, _, c in chunks]
    if all(c is not None for c in clocks[-SETTLE_STABLE_CHUNKS - 1:]) and len(clocks) > SETTLE_STABLE_CHUNKS:
        last = clocks[-SETTLE_STABLE_CHUNKS - 1:]
        return "clock" if all(b >= a - SETTLE_CLOCK_TOLERANCE_MHZ for a, b in pairwise(last)) else None
    rates = [r for _, r, _ in chunks]
    if len(rates) < 2 * PLATEAU_CHUNKS:
        return None
    recent, before = rates[-PLATEAU_CHUNKS:], rates[-2 * PLATEAU_CHUNKS:-PLATEAU_CHUNKS]
    mean = statistics.fmean(recent)
    cov = statistics.pstdev(recent) / mean
    drift = abs(mean - statistics.fmean(before)) / statistics.fmean(before)
    return "plateau" if cov < PLATEAU_COV and drift < PLATEAU_DRIFT else None


# ------------------------------------------------------------------------------------ measurements (CUDA only)

_READINGS = (("sm_clock_mhz", "clock_rate", 1.0), ("power_w", "power_draw", 1e-3),
             ("utilization_pct", "utilization", 1.0), ("temperature_c", "temperature", 1.0))


def board_readings(torch: Any) -> dict[str, float | None]:
    """SM clock, power, utilization and temperature through torch.cuda's NVML / amdsmi readers; None for each one
    this machine cannot give (no nvidia-ml-py, an unsupported field, a torch without the reader)."""
    out: dict[str, float | None] = {}
    for key, name, scale in _READINGS:
        reader = getattr(torch.cuda, name, None)
        try:
            value = float(reader()) * scale if reader is not None else None
        except Exception:  # ModuleNotFoundError without nvidia-ml-py, NVMLError / RuntimeError without support
            value = None
        out[key] = value if value is None or math.isfinite(value) else None
    return out


def _timed(torch: Any, fn: Callable[[int], None], iterations: int) -> float:
    """Device seconds of `iterations` calls queued back to back (CUDA events around the loop)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(iterations)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def settle(torch: Any, phase: SustainedPhase, dtype: Any) -> dict[str, Any]:
    """Hold the board at full load with `dtype` products (the fit's 16-bit type) until its clock settles
    (`settle_reason`); what it saw."""
    side = SETTLE_SIDE
    a = torch.randn(side, side, device="cuda", dtype=dtype)
    b = torch.randn(side, side, device="cuda", dtype=dtype)
    c = torch.empty(side, side, device="cuda", dtype=dtype)

    def run(n: int) -> None:
        for _ in range(n):
            torch.mm(a, b, out=c)

    before = board_readings(torch)
    per_iteration = _timed(torch, run, 2) / 2
    chunks: list[tuple[float, float, float | None]] = []
    elapsed, reason = 0.0, None
    while reason is None:
        n = iterations_for(phase.chunk_s, per_iteration)
        t = _timed(torch, run, n)
        per_iteration = t / n
        elapsed += t
        chunks.append((elapsed, n / t, board_readings(torch)["sm_clock_mhz"]))
        reason = settle_reason(chunks, phase)
    return {"seconds": elapsed, "reason": reason, "chunks": len(chunks),
            "flops_per_s": 2.0 * side**3 * chunks[-1][1], "before": before, "after": board_readings(torch)}


def measure_window(torch: Any, run: Callable[[int], None], seconds_per_iteration: float,
                   phase: SustainedPhase) -> SustainedWindow:
    """`run(n)` (n iterations of one shape) warmed for warm_s, then timed over window_s in sub-windows."""
    warm, per_sub = window_schedule(phase, seconds_per_iteration)
    run(warm)
    return window_result([(per_sub, _timed(torch, run, per_sub)) for _ in range(phase.sub_windows)])
