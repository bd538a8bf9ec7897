"""The tune report's trials table starts with the plan the tuner recommends."""

from __future__ import annotations

from dataclasses import replace

from planner.build import build_config
from planner.estimate import estimate
from planner.tune_result import TrialRow, TuneResult
from reports.tune_report import trials_table


def _row(number: int, tokens_per_s: float) -> TrialRow:
    return TrialRow(phase="analytical", number=number, state="complete", name=f"plan-{number}", params={},
                    tokens_per_s=tokens_per_s, peak_bytes=1e9, predicted_tokens_per_s=None,
                    predicted_peak_bytes=None, reason="", wall_s=None)


def test_winner_by_the_tie_rule_is_the_first_row() -> None:
    # trial 2 is 0.5% slower than trial 1 but simpler, so the tuner picked it (plan's 1% tie rule); the table
    # used to sort by tokens/s alone and showed trial 1 first with trial 2 highlighted below it
    rows = [_row(0, 900.0), _row(1, 1000.0), _row(2, 995.0)]
    best = estimate(build_config(model="llama-2-7b", gpus="1xA100-80G"), timed=False)
    result = TuneResult(study="s", storage="memory", measured=False, sampler="exhaustive", space_points=3,
                        runnable_plans=3, best=best, best_row=rows[2], rows=rows, pareto=[], trials_completed=3,
                        trials_failed=0, trials_infeasible=0, measured_trial_s=0.0)
    table = trials_table(result)
    numbers = list(table.table().columns[0].cells)
    assert numbers == ["2", "1", "0"]
    assert list(trials_table(replace(result, best_row=rows[1])).table().columns[0].cells) == ["1", "2", "0"]
