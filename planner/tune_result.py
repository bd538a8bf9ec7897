"""What a tune found, as plain data: the rows of its trials and the result `reports.tune_report` draws
(runner/tune.py fills them from the Optuna study; nothing here imports optuna)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.estimate import Estimate
from planner.tune_space import Choice


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
    runnable: bool | None = None  # whether `ftplan run` executes the plan (planner/runnable.py)
    calibrated_tokens_per_s: float | None = None  # measured: the re-ranked prediction it was chosen by
    tokens_per_s_range: tuple[float, float] | None = None  # measured: slowest and fastest timed step
    steps: int | None = None  # measured: timed steps (repeats)
    round: int | None = None
    worker: str = ""
    fit_kinds: tuple[str, ...] = ()  # analytical: what does not fit (planner.estimate.FitKind values)


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
