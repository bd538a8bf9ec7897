"""The tuner's options as plain data (its results are `planner.tune_result`, which reports/ draws)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from planner.calibration import DEFAULT, Calibration
from planner.estimate import Limits

DEFAULT_MEASURED_TRIALS = 8
# --sampler auto enumerates a space of at most this many runnable plans even when --trials asks for fewer: `plan`
# evaluates that many in well under a second (benchmarks/plan_speed.py: 16,128 candidates in 0.5 s of planning on
# this 2-core VM). A count, not a timing, so the same command picks the same sampler on every machine and load.
ENUMERATE_UP_TO = 10_000
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a trial of a shared study
Progress = Callable[[int, int | None, str], None]  # (trials or sampled plans done, planned or None, best so far)


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    trials: int | None = None  # analytical: sampled plans (None: exhaustive); measured: real trials, all workers
    measure: bool = False
    top: int | None = None  # measured: plans in the first round (default: half the trials)
    storage: str | None = None  # SQLAlchemy URL, journal:PATH or "memory"; None: sqlite:///ftplan-tune.db
    study: str | None = None  # None: derived from model, GPUs, global batch and sequence length
    timeout_s: float | None = None
    seed: int = 0
    trial_steps: int = 3  # timed steps of a trial; close contests get repeat trials (runner/tuning/measured.py)
    trial_warmup_steps: int = 1
    trial_timeout_s: float = 300.0
    heartbeat_s: float = 10.0  # measured: a worker's heartbeat interval while it runs a trial
    grace_s: float | None = None  # silence after which a trial's worker counts as lost (default 6 heartbeats)
    enumerate_up_to: float = ENUMERATE_UP_TO  # analytical: enumerate a space of at most this many runnable plans
    storage_retry_s: float = 60.0  # how long a worker retries an unreachable storage before exiting 2
    limits: Limits = field(default_factory=Limits)
    cal: Calibration = DEFAULT
    include_unrunnable: bool = False  # False: the winner is the best plan `ftplan run` executes

    @property
    def grace_period_s(self) -> float:
        return self.grace_s if self.grace_s is not None else 6 * self.heartbeat_s
