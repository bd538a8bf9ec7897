"""Fit the planner's correction factors from measured profiles, and write the calibration file.

Each profile is a configuration with its measured peak bytes (the most loaded rank; the allocated reading,
max_memory_allocated on CUDA and live tensors on the CPU, compared with the planner's allocated reading) and, for real
runs, its measured step time. The factors (planner/calibration.py documents them and the file):
- activation_multiplier, overhead_multiplier: scale the saved activations and the framework buffers
  in planner.memory.memory_per_gpu; fitted together by minimizing the sum of squared log-ratios
  predicted/measured of the peak over a grid, then refined around the best point.
- compute_efficiency: the achievable fraction of peak FLOP/s in planner.timing; fitted on the
  profiles without data-parallel communication (one process) by the same log-ratio criterion, or on
  all timed profiles when every one is multi-process;
- comm_efficiency: the achievable fraction of link bandwidth, fitted on the multi-process profiles
  with compute_efficiency fixed by one-process ones. Left null (the planner's default) otherwise.
Log-ratios make an over- and an under-estimate by the same factor count the same.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from planner.atomic import write_text_atomic
from planner.calibration import DEFAULT, Calibration
from planner.errors import PlanError
from planner.memory import memory_per_gpu
from planner.strategy import Engine, TrainConfig

RIDGE = 1e-4  # weight of the pull of the memory factors towards 1 (squared log), see `fit`


@dataclass(frozen=True, kw_only=True, slots=True)
class Profile:
    config: TrainConfig
    peak_bytes: float
    step_time_s: float | None = None  # None for dry runs


@dataclass(frozen=True, kw_only=True, slots=True)
class Errors:
    """Relative errors (predicted / measured - 1) of the peak memory and the step time."""

    memory: tuple[float, ...]
    time: tuple[float, ...]

    def summary(self) -> dict[str, float | None]:
        def stats(xs: tuple[float, ...]) -> tuple[float | None, float | None]:
            if not xs:
                return None, None
            return statistics.median(abs(x) for x in xs), max(abs(x) for x in xs)

        mm, mw = stats(self.memory)
        tm, tw = stats(self.time)
        return {"memory_median_abs": mm, "memory_worst_abs": mw, "time_median_abs": tm, "time_worst_abs": tw}


def predicted_step_time_s(cfg: TrainConfig, cal: Calibration) -> float:
    from planner.timing import step_time

    return step_time(cfg, cal).step_time_s


def errors(profiles: Sequence[Profile], cal: Calibration) -> Errors:
    mem = tuple(memory_per_gpu(p.config, cal).allocated / p.peak_bytes - 1 for p in profiles)
    tim = tuple(predicted_step_time_s(p.config, cal) / p.step_time_s - 1 for p in profiles if p.step_time_s)
    return Errors(memory=mem, time=tim)


def _log_loss(pairs: Sequence[tuple[float, float]]) -> float:
    return sum(math.log(pred / meas) ** 2 for pred, meas in pairs if pred > 0 and meas > 0)


def _search_1d(loss: Callable[[float], float], lo: float, hi: float, steps: int = 40) -> float:
    """Minimize a unimodal-enough function on [lo, hi] on a log grid, then by golden-section refinement."""
    grid = [lo * (hi / lo) ** (k / steps) for k in range(steps + 1)]
    best = min(range(len(grid)), key=lambda k: loss(grid[k]))
    a, b = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if loss(c) <= loss(d):
            b = d
        else:
            a = c
    return (a + b) / 2


def fit(profiles: Sequence[Profile]) -> Calibration:
    """The factors that minimize the squared log-error over `profiles` (see the module docstring)."""
    if not profiles:
        raise PlanError("no profiles to calibrate from")

    def mem_loss(a: float, o: float) -> float:
        cal = Calibration(activation_multiplier=a, overhead_multiplier=o)
        # a weak pull towards 1 picks, among factors that fit equally well (one profile cannot tell
        # activations from buffers), the ones closest to the unmodified model
        prior = RIDGE * (math.log(a) ** 2 + math.log(o) ** 2)
        return _log_loss([(memory_per_gpu(p.config, cal).allocated, p.peak_bytes) for p in profiles]) + prior

    grid = [0.5 + 0.05 * k for k in range(51)]  # 0.5 .. 3.0
    a, o = min(((a, o) for a in grid for o in grid), key=lambda ao: mem_loss(*ao))
    for _ in range(2):  # coordinate refinement
        a = _search_1d(lambda x, o=o: mem_loss(x, o), max(0.05, a - 0.1), a + 0.1, steps=10)
        o = _search_1d(lambda x, a=a: mem_loss(a, x), max(0.05, o - 0.1), o + 0.1, steps=10)
    return fit_time(profiles, Calibration(activation_multiplier=round(a, 4), overhead_multiplier=round(o, 4)))


def fit_time(profiles: Sequence[Profile], cal: Calibration = DEFAULT) -> Calibration:
    """`cal` with the compute and communication efficiencies fitted to the timed profiles (the time half of
    `fit`, which the measured tune runs after every round: the memory grid costs ~50x more)."""
    timed = [p for p in profiles if p.step_time_s]
    single = [p for p in timed if p.config.world_size == 1]
    multi = [p for p in timed if p.config.world_size > 1]
    # compute efficiency from the runs without communication; from all runs when there are none
    # (then communication keeps its default efficiency)
    compute_runs = single or multi
    if compute_runs:
        eff = _search_1d(lambda e: _log_loss([(predicted_step_time_s(p.config, replace(cal, compute_efficiency=e)),
                                                p.step_time_s) for p in compute_runs]), 1e-4, 1.0)
        cal = replace(cal, compute_efficiency=round(eff, 5))
    if single and multi:
        comm = _search_1d(lambda e: _log_loss([(predicted_step_time_s(p.config, replace(cal, comm_efficiency=e)),
                                                 p.step_time_s) for p in multi]), 1e-3, 1.0)
        cal = replace(cal, comm_efficiency=round(comm, 5))
    return cal


def calibration_key(cfg: TrainConfig, versions: dict[str, str]) -> dict[str, str]:
    framework = {Engine.ddp: "ddp", Engine.deepspeed: "deepspeed", Engine.fsdp: "fsdp"}[cfg.engine]
    key = {"device": cfg.cluster.gpu.name, "framework": framework}
    key.update({k: v for k, v in versions.items() if k in ("torch", "transformers", "deepspeed", "peft")})
    return key


def calibration_dict(cal: Calibration, key: dict[str, str], before: Errors, after: Errors,
                     n_profiles: int) -> dict[str, Any]:
    return {"ftplan_calibration": 1, "key": key,
            "factors": {"activation_multiplier": cal.activation_multiplier,
                        "overhead_multiplier": cal.overhead_multiplier,
                        "compute_efficiency": cal.compute_efficiency, "comm_efficiency": cal.comm_efficiency},
            "error_before": before.summary(), "error_after": after.summary(), "profiles": n_profiles}


def write_calibration(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a crash leaves the old file or none, never half of one."""
    write_text_atomic(Path(path), json.dumps(data, indent=2) + "\n")


def calibrate(profiles: Sequence[Profile], versions: dict[str, str]) -> tuple[Calibration, dict[str, Any]]:
    """Fit, and the file's contents with the error before (default factors) and after."""
    cal = fit(profiles)
    before, after = errors(profiles, DEFAULT), errors(profiles, cal)
    return cal, calibration_dict(cal, calibration_key(profiles[0].config, versions), before, after, len(profiles))


# --- saved profiles (`ftplan profile ... --save FILE`, read by `ftplan profile calibrate`) -----------

def profile_dict(profile: Profile, *, kind: str, versions: dict[str, str], extra: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    from planner.serialize import config_to_dict

    return {"ftplan_profile": 1, "kind": kind, "config": config_to_dict(profile.config),
            "measured_peak_bytes_total": profile.peak_bytes, "step_time_s": profile.step_time_s,
            "versions": versions, **(extra or {})}


def load_profile(path: Path) -> tuple[Profile, dict[str, str]]:
    from planner.input_files import JSONInputError, read_json_file
    from planner.serialize import config_from_dict

    try:  # a regular file of bounded size, strict JSON (planner/input_files.py)
        data = read_json_file(path, what="profile")
    except JSONInputError as exc:
        raise PlanError(f"profile {path} is not readable JSON: {exc.reason}") from None
    if not isinstance(data, dict) or data.get("ftplan_profile") != 1:
        raise PlanError(f"{path} is not an ftplan profile (written by `ftplan profile run/dry-run --save`)")
    try:
        profile = Profile(config=config_from_dict(data["config"]), peak_bytes=float(data["measured_peak_bytes_total"]),
                          step_time_s=None if data.get("step_time_s") is None else float(data["step_time_s"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"profile {path}: missing or bad field ({exc})") from None
    if profile.peak_bytes <= 0:
        raise PlanError(f"profile {path}: measured peak must be positive")
    return profile, dict(data.get("versions") or {})


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-a over all pairs: (concordant - discordant) / pairs. How well a predicted order of
    plans agrees with the measured one (benchmarks/rank_order.py, tests/validation/test_rank_goldens.py)."""
    n, s = len(xs), 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = xs[i] - xs[j], ys[i] - ys[j]
            s += (a * b > 0) - (a * b < 0)
    return s / (n * (n - 1) / 2)
