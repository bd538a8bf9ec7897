"""What a tune found, as plain data: the rows of its trials and the result `reports.tune_report` draws
(runner/tune.py fills them from the Optuna study; nothing here imports optuna)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate import Estimate
from planner.tune_space import Choice


@dataclass(frozen=True, kw_only=True)
class TrialRow:
    phase: str  # analytical | measured
    number: int
    state: str  # complete | infeasible | failed | duplicate | running | waiting
    name: str
    params: dict[str, Choice]
    tokens_per_s: float | None  # measured in a measured row, the time model's otherwise
    peak_bytes: float | None
    predicted_tokens_per_s: float | None
    predicted_peak_bytes: float | None
    reason: str
    wall_s: float | None


@dataclass(frozen=True, kw_only=True)
class TuneResult:
    study: str
    storage: str
    measured: bool
    sampler: str  # exhaustive | tpe
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
