"""The autotuner: Optuna studies over `planner.tune_space`, analytical first, measured on request.

`runner/tuning/` holds the parts: `analytical` (the time and memory models as objectives; enumerate or
TPE, each plan evaluated once), `measured` (rounds of real trials that re-rank with the calibration they
fit, shared by any number of workers), `storage` (SQLite / PostgreSQL / journal storages, backoff,
heartbeats) and `results` (options and results as plain data). This module runs a whole tune.

Under --measure the measured study lives in the storage, so a killed or interrupted tune resumes
(measured plans are neither enqueued nor run again), and several processes or nodes pointed at one
storage and study split the trials (`runner.tuning.measured`).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from planner.errors import PlanError
from planner.estimate import Estimate, FitKind, estimate
from planner.runnable import runnable
from planner.search import resolve_ties, simplicity_key
from planner.tune_result import TrialRow, TuneResult
from planner.tune_space import TuneSpace, analytic_score, pareto_front, rank_key
from runner.tuning.analytical import (
    default_study_name,
    evaluated,
    exhaustive_study,
    feasible,
    load_study,
    sampled_study,
)
from runner.tuning.measured import (
    MeasuredTune,
    calibration_dict,
    final_model,
    is_verdict,
    rank_by_lower_bound,
    spread,
)
from runner.tuning.results import Progress, TuneOptions
from runner.tuning.storage import (
    DEFAULT_STORAGE,
    MEMORY_STORAGE,
    WORKER_LOST,
    Retry,
    new_sqlite_file,
    open_storage,
)

__all__ = ["DEFAULT_STORAGE", "MEMORY_STORAGE", "TrialRow", "TuneOptions", "TuneResult", "exhaustive_study",
           "open_storage", "quiet_optuna", "spread", "tune"]


# ---------------------------------------------------------------- the whole tune

def _state(t: FrozenTrial) -> str:
    a = t.user_attrs
    if t.state is TrialState.COMPLETE:
        return "complete" if feasible(t) else "infeasible"
    if t.state is TrialState.PRUNED:
        return "duplicate" if "duplicate_of" in a else "infeasible"
    if t.state is TrialState.FAIL:
        # a real trial's own OOM / crash / hang, or its worker lost (the plan is re-run by another)
        return "failed" if is_verdict(t) or a.get("reason") != WORKER_LOST else "lost"
    return t.state.name.lower()


def _row(t: FrozenTrial, phase: str) -> TrialRow:
    a = t.user_attrs
    value = t.values[0] if t.values else None
    measured = phase == "measured"
    low, high = a.get("tokens_per_s_low"), a.get("tokens_per_s_high")
    return TrialRow(phase=phase, number=t.number, state=_state(t), name=str(a.get("name", "")),
                    params=dict(t.params), tokens_per_s=value, peak_bytes=a.get("peak_bytes"),
                    predicted_tokens_per_s=a.get("predicted_tokens_per_s") if measured else value,
                    predicted_peak_bytes=a.get("predicted_peak_bytes") if measured else a.get("peak_bytes"),
                    reason=str(a.get("reason", "") or (f"{a['failure']}" if "failure" in a else "")),
                    wall_s=a.get("wall_s"), calibrated_tokens_per_s=a.get("calibrated_tokens_per_s"),
                    tokens_per_s_range=(float(low), float(high)) if low is not None and high is not None else None,
                    steps=a.get("steps"), round=a.get("round"), worker=str(a.get("worker", "")),
                    runnable=a.get("runnable"), fit_kinds=tuple(a.get("fit_kinds", ())))


def _pick(ranked: list[FrozenTrial], space: TuneSpace, opts: TuneOptions) -> FrozenTrial:
    """The winner among trials ranked best first: the best runnable one (the best of all when none is runnable,
    or with --include-unrunnable). Trials stored before the flag existed are judged from their plan."""
    if opts.include_unrunnable:
        return ranked[0]
    for t in ranked:
        flag = t.user_attrs.get("runnable")
        if flag is None:
            cfg, _ = space.config_for(t.params)
            flag = cfg is not None and runnable(cfg)
        if flag:
            return t
    return ranked[0]


def _with_headroom(ranked: list[FrozenTrial], best: FrozenTrial, space: TuneSpace, opts: TuneOptions) -> FrozenTrial:
    """plan's recommendation (planner/search.py `recommend`): a tight winner gives way to the fastest plan with
    headroom unless it is faster by more than the margin."""
    from planner.search import TIGHT_MARGIN

    if not _estimate_for(space, best.params, opts).tight:
        return best
    for t in ranked:
        cfg, _ = space.config_for(t.params)
        if cfg is None or (not opts.include_unrunnable and not runnable(cfg)):
            continue
        if not estimate(cfg, opts.limits, opts.cal, timed=False).tight:
            return t if best.values[0] / t.values[0] - 1.0 <= TIGHT_MARGIN else best
    return best


def _simplicity(space: TuneSpace, t: FrozenTrial) -> tuple[int, ...]:
    cfg, _ = space.config_for(t.params)
    return simplicity_key(cfg) if cfg is not None else (10**6,)


def _estimate_for(space: TuneSpace, params: dict[str, Any], opts: TuneOptions) -> Estimate:
    cfg, reason = space.config_for(params)
    if cfg is None:
        raise PlanError(f"the winning trial no longer names a valid plan: {reason}")
    return estimate(cfg, opts.limits, opts.cal)


def _nothing_fits(space: TuneSpace, rows: list[TrialRow], what: str) -> PlanError:
    reasons: dict[str, int] = {}
    for r in rows:
        key = "does not fit in GPU memory" if FitKind.gpu_memory.value in r.fit_kinds else (r.reason or r.state)
        reasons[key] = reasons.get(key, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:2]
    detail = "; ".join(f"{n} x {k}" for k, n in top)
    return PlanError(f"nothing in the search space {what} for {space.base.model.name} on {space.base.cluster}"
                     f"{': ' + detail if detail else ''}")


def _analytical(space: TuneSpace, opts: TuneOptions, storage: optuna.storages.BaseStorage, name: str,
                runnable: int, progress: Progress | None) -> tuple[optuna.Study, bool]:
    """The analytical study, and whether it enumerated the space."""
    exhaustive = opts.measure or opts.trials is None or opts.trials >= runnable or runnable <= opts.enumerate_up_to
    if not exhaustive:
        return sampled_study(space, opts, storage, name, runnable, progress), False
    if not opts.measure:
        # the persistent study is still opened: its identity is checked even when nothing is stored in it
        load_study(storage, name, space, measured=False, sampler=optuna.samplers.RandomSampler())
    return exhaustive_study(space, opts, None if opts.measure else progress), True


def _measured(space: TuneSpace, ranked: list, opts: TuneOptions, storage: optuna.storages.BaseStorage, name: str,
              progress: Progress | None) -> tuple[list[FrozenTrial], dict[str, Any] | None]:
    study = load_study(storage, f"{name}:measured", space, measured=True, sampler=optuna.samplers.RandomSampler())
    retry = Retry(url=opts.storage or DEFAULT_STORAGE, retry_s=opts.storage_retry_s)
    MeasuredTune(space=space, ranked=ranked, opts=opts, storage=storage, study=study, retry=retry,
                 progress=progress).run()
    trials = retry.call(lambda: study.get_trials(deepcopy=False), "reading trials")
    model = final_model(space, trials, opts.cal)
    cal = None
    if model.measured:
        cal = {"factors": calibration_dict(model.cal), "from_trials": model.measured,
               "ratio_by_strategy": {k: v for k, (v, _) in model.ratio_by_strategy.items()},
               "log_spread": model.log_spread}
    return trials, cal


def tune(space: TuneSpace, opts: TuneOptions, progress: Progress | None = None) -> TuneResult:
    """The tune; a SQLite file it created is removed again when it fails (an interrupted measured tune keeps
    it: that tune resumes from it)."""
    created = new_sqlite_file(opts.storage or DEFAULT_STORAGE)
    try:
        return _tune(space, opts, progress)
    except BaseException as exc:
        if created is not None and not (opts.measure and isinstance(exc, KeyboardInterrupt)):
            for suffix in ("", "-journal", "-wal", "-shm"):
                created.with_name(created.name + suffix).unlink(missing_ok=True)
        raise


def _tune(space: TuneSpace, opts: TuneOptions, progress: Progress | None = None) -> TuneResult:
    if opts.measure:
        from profiler.launch import check_device

        check_device(space.base)  # --gpus 8xA800 --measure on a machine without them: one clear error
    storage, url = open_storage(opts.storage, opts.storage_retry_s)
    name = opts.study or default_study_name(space)
    n_valid = sum(1 for _ in space.feasible())
    if n_valid == 0:
        raise PlanError(f"the search space holds no valid plan for {space.base.model.name} on {space.base.cluster}"
                        + (" that a measured trial can run (TP = PP = 1, no offload, no QLoRA)"
                           if opts.measure else ""))
    analytical, exhaustive = _analytical(space, opts, storage, name, n_valid, progress)
    a_trials = evaluated(analytical)
    a_rows = [_row(t, "analytical") for t in a_trials]
    fits = [t for t in a_trials if feasible(t)]
    pareto = [_row(fits[i], "analytical") for i in pareto_front([(t.values[0], t.values[1]) for t in fits])]
    if not fits:
        raise _nothing_fits(space, a_rows, "fits")
    fits.sort(key=lambda t: rank_key(t.values[0], t.values[1]))
    # plan's tie rule: within 1% of the fastest left, the simpler plan first (planner/search.py)
    fits = resolve_ties(fits, [t.values[0] for t in fits], [_simplicity(space, t) for t in fits])
    common = {"study": name, "storage": url, "measured": opts.measure, "space_points": space.size,
              "runnable_plans": n_valid, "pareto": pareto}
    if not opts.measure:
        failed = sum(1 for t in a_trials if t.state is TrialState.FAIL)
        best_a = _with_headroom(fits, _pick(fits, space, opts), space, opts)
        return TuneResult(**common, sampler="exhaustive" if exhaustive else "tpe",
                          best=_estimate_for(space, best_a.params, opts), best_row=_row(best_a, "analytical"),
                          rows=a_rows, trials_completed=len(fits), trials_failed=failed,
                          trials_infeasible=len(a_trials) - len(fits) - failed, measured_trial_s=0.0,
                          plans_evaluated=sum(1 for t in a_trials if t.state is TrialState.COMPLETE))
    ranked = []
    for t in fits:
        cfg, _ = space.config_for(t.params)
        assert cfg is not None
        ranked.append((cfg, analytic_score(cfg, opts.limits, opts.cal)))
    m_trials, cal = _measured(space, ranked, opts, storage, name, progress)
    rows = [_row(t, "measured") for t in m_trials]
    ok = [t for t in m_trials if t.state is TrialState.COMPLETE]
    failed = sum(1 for r in rows if r.state == "failed")
    if not ok:
        raise PlanError(f"no measured trial succeeded ({failed} failed"
                        + (f"; first: {rows[0].reason}" if rows else "") + f"); see study {name}:measured")
    # the plan whose pooled interval's lower end is best: a lucky fast trial does not crown a plan
    best_t = _pick(rank_by_lower_bound(ok), space, opts)
    return TuneResult(**common, sampler="halving", best=_estimate_for(space, best_t.params, opts),
                      best_row=_row(best_t, "measured"), rows=rows, trials_completed=len(ok), trials_failed=failed,
                      trials_infeasible=sum(1 for t in m_trials if t.state is TrialState.PRUNED),
                      measured_trial_s=sum(float(t.user_attrs.get("wall_s", 0.0)) for t in m_trials),
                      trials_lost=sum(1 for r in rows if r.state == "lost"), calibration=cal)


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
