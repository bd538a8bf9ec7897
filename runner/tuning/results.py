"""The tuner's options and results as plain data (reports/ renders them without importing optuna)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from planner.calibration import DEFAULT, Calibration
from planner.estimate import Estimate, Limits
from planner.tune_space import Choice

DEFAULT_MEASURED_TRIALS = 8
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a trial of a shared study
Progress = Callable[[int, int | None, str], None]  # (trials done, trials planned or None, best so far)


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    trials: int | None = None  # analytical: sampled plans (None: exhaustive); measured: real trials, all workers
    measure: bool = False
    top: int | None = None  # measured: plans in the first round (default: half the trials)
    storage: str | None = None  # SQLAlchemy URL, journal:PATH or "memory"; None: sqlite:///ftplan-tune.db
    study: str | None = None  # None: derived from model, GPUs, global batch and sequence length
    timeout_s: float | None = None
    seed: int = 0
    trial_steps: int = 3  # timed steps of a trial (repeats); doubled where the leaders' intervals overlap
    trial_warmup_steps: int = 1
    trial_timeout_s: float = 300.0
    heartbeat_s: float = 10.0  # measured: a worker's heartbeat interval while it runs a trial
    grace_s: float | None = None  # silence after which a trial's worker counts as lost (default 6 heartbeats)
    enumerate_under_s: float = 1.0  # analytical: enumerate the space when evaluating all of it takes less
    storage_retry_s: float = 60.0  # how long a worker retries an unreachable storage before exiting 2
    limits: Limits = field(default_factory=Limits)
    cal: Calibration = DEFAULT

    @property
    def grace_period_s(self) -> float:
        return self.grace_s if self.grace_s is not None else 6 * self.heartbeat_s


@dataclass(frozen=True, kw_only=True)
class TrialRow:
    phase: str  # analytical | measured
    number: int
    state: str  # complete | infeasible | failed | lost | duplicate | running | waiting
    name: str
    params: dict[str, Choice]
    tokens_per_s: float | None  # measured (the median step) in a measured row, the time model's otherwise
    peak_bytes: float | None
    predicted_tokens_per_s: float | None  # the time model with the user's calibration
    predicted_peak_bytes: float | None
    reason: str
    wall_s: float | None
    calibrated_tokens_per_s: float | None = None  # measured: the re-ranked prediction it was chosen by
    tokens_per_s_range: tuple[float, float] | None = None  # measured: slowest and fastest timed step
    steps: int | None = None  # measured: timed steps (repeats)
    round: int | None = None
    worker: str = ""


@dataclass(frozen=True, kw_only=True)
class TuneResult:
    study: str
    storage: str
    measured: bool
    sampler: str  # exhaustive | tpe | halving
    space_points: int  # the product of the dimensions
    runnable_plans: int  # valid plans in the space (that a measured trial can run, under --measure)
    best: Estimate
    best_row: TrialRow
    rows: list[TrialRow]  # the deciding phase's trials (measured under --measure)
    pareto: list[TrialRow]  # feasible analytical plans no other beats on both tokens/s and memory
    trials_completed: int
    trials_failed: int
    trials_infeasible: int
    measured_trial_s: float  # summed wall time of the real trials run or recorded
    trials_lost: int = 0  # measured: trials whose worker died (re-run by another)
    plans_evaluated: int = 0  # analytical: distinct plans the time model evaluated
    calibration: dict[str, Any] | None = None  # measured: the factors fitted from the measured trials
