"""The analytical tune: the time and memory models as Optuna's objectives, every plan evaluated once.

Two objectives: the time model's tokens/s (maximized) and the memory model's peak bytes per GPU
(minimized). Plans that do not fit are kept as evaluated trials whose Optuna constraint
(`constraints_func`, the excess in bytes over GPU, host or NVMe capacity) is positive, so samplers and
`best_trials` treat them as infeasible; a choice combination that names no valid plan is pruned with its
reason in the trial's user_attrs. Neither gets a made-up score.

Enumerate or sample: when the space holds at most `trials` runnable plans, when no `trials` is given,
or when the space holds at most `enumerate_up_to` runnable plans (runner.tuning.results.ENUMERATE_UP_TO, 10,000:
a count, so the choice does not depend on the machine's speed), every plan is evaluated (the exhaustive grid,
the same enumeration as `planner.search.plan`, so the exact
winner) into an in-memory study: a model evaluation costs ~0.1 ms, a SQLite trial write ~15 ms, so
persisting thousands of them would cost more than recomputing. Otherwise TPE (Watanabe 2023,
"Tree-structured Parzen Estimator: Understanding Its Algorithm Components") samples `trials` distinct
plans into the persistent study: a proposal that names a plan already in the study (TPE proposes the
same categorical point again and again once it has converged) is recorded as a pruned duplicate that
points at the first trial, and one that names no plan is recorded as pruned with its reason; neither
costs an evaluation or budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState, create_trial

from planner.errors import PlanError
from planner.runnable import runnable
from planner.strategy import TrainConfig
from planner.tune_space import (
    Choice,
    TuneSpace,
    analytic_score,
    choices_of,
    params_key,
    rank_key,
    trial_label,
)
from runner.tuning.results import WORKER, Progress, TuneOptions

# Optuna >= 5 constraints: system attr "constraints:<key>" (Trial.set_constraint); feasible when all <= 0
CONSTRAINT = "overshoot_bytes"
# the constraint of a point that names no plan: above any plan's excess in bytes, so that TPE's infeasible
# split (optuna/samplers/_tpe/sampler.py, _split_infeasible_trials: ascending total violation) ranks every
# real plan, fitting or not, ahead of it. With 1.0 it ranked such points first, and two processes sharing a
# study converged on them (30 proposals, 2 plans, neither fitting)
NO_PLAN_OVERSHOOT = 1e30


ANALYTICAL_METRICS = ("tokens_per_s", "peak_bytes")  # the two objectives, as optuna-dashboard labels them
MEASURED_METRICS = ("tokens_per_s",)


def name_metrics(study: optuna.Study, names: tuple[str, ...]) -> None:
    """Label the objectives (Study.set_metric_names, experimental since Optuna 3.2): without it
    optuna-dashboard and `optuna trials` show "Objective 0" and "Objective 1"."""
    if study.metric_names == list(names):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))


def default_study_name(space: TuneSpace) -> str:
    b = space.base
    return f"{b.model.name}@{b.cluster}-gb{space.global_batch}-seq{b.seq_len}"


def _identity(space: TuneSpace) -> dict[str, Any]:
    b = space.base
    return {"ftplan_tune": 1, "model": b.model.name, "gpus": str(b.cluster), "global_batch": space.global_batch,
            "seq_len": b.seq_len}


def load_study(storage: optuna.storages.BaseStorage, name: str, space: TuneSpace, *, measured: bool,
               sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create or load `name`, refusing a study made for another model, cluster, batch or objective."""
    directions = ["maximize"] if measured else ["maximize", "minimize"]
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                    load_if_exists=True)
    except ValueError as exc:
        raise PlanError(f"study {name!r}: {exc}") from None
    mine = {**_identity(space), "phase": "measured" if measured else "analytical"}
    theirs = study.user_attrs
    if not theirs.get("ftplan_tune"):
        if study.trials:
            raise PlanError(f"study {name!r} exists and was not made by ftplan tune; pick another --study")
        # the marker last: a worker loading the study while this one writes sees no marker yet (and writes the
        # same identity), never a marked study with some keys still missing
        for k, v in mine.items():
            if k != "ftplan_tune":
                study.set_user_attr(k, v)
        name_metrics(study, MEASURED_METRICS if measured else ANALYTICAL_METRICS)
        study.set_user_attr("ftplan_tune", mine["ftplan_tune"])
        return study
    for key in ("model", "gpus", "global_batch", "seq_len", "phase"):
        if theirs.get(key) != mine[key]:
            raise PlanError(f"study {name!r} belongs to {theirs.get('model')} on {theirs.get('gpus')} (global batch "
                            f"{theirs.get('global_batch')}, seq-len {theirs.get('seq_len')}, "
                            f"{theirs.get('phase')}), not {mine['model']} on {mine['gpus']} (global batch "
                            f"{mine['global_batch']}, seq-len {mine['seq_len']}, {mine['phase']}); "
                            f"pick another --study")
    if [d.name.lower() for d in study.directions] != directions:
        raise PlanError(f"study {name!r} optimizes {len(study.directions)} objectives, not {len(directions)}")
    name_metrics(study, MEASURED_METRICS if measured else ANALYTICAL_METRICS)  # studies of older ftplan versions
    return study


def _distributions(space: TuneSpace) -> dict[str, optuna.distributions.CategoricalDistribution]:
    return {d.name: optuna.distributions.CategoricalDistribution(d.choices) for d in space.dimensions}


def _suggest(trial: optuna.Trial, space: TuneSpace) -> dict[str, Choice]:
    return {d.name: trial.suggest_categorical(d.name, d.choices) for d in space.dimensions}


# ---------------------------------------------------------------- analytical phase

def _analytic_attrs(cfg: TrainConfig, s: Any) -> dict[str, Any]:
    attrs = {"name": trial_label(cfg), "tokens_per_s": s.tokens_per_s, "step_time_s": s.step_time_s,
             "peak_bytes": s.peak_bytes, "overshoot_bytes": s.overshoot_bytes, "grad_accum": cfg.grad_accum,
             "runnable": runnable(cfg)}
    if s.overshoot_bytes > 0:
        attrs["reason"] = "; ".join(s.estimate.fit_reasons) or "does not fit"
        attrs["fit_kinds"] = [f.kind.value for f in s.estimate.fit_failures]
    return attrs


def exhaustive_study(space: TuneSpace, opts: TuneOptions, progress: Progress | None = None) -> optuna.Study:
    """Every runnable plan as a finished trial of an in-memory two-objective study."""
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="analytical",
                                sampler=optuna.samplers.RandomSampler(seed=opts.seed))
    name_metrics(study, ANALYTICAL_METRICS)
    dists = _distributions(space)
    configs = list(space.feasible())
    best: tuple[float, float] | None = None
    best_name = ""
    batch: list[FrozenTrial] = []
    for i, cfg in enumerate(configs, 1):
        s = analytic_score(cfg, opts.limits, opts.cal)
        if s.overshoot_bytes <= 0 and (best is None or rank_key(s.tokens_per_s, s.peak_bytes) < best):
            best, best_name = rank_key(s.tokens_per_s, s.peak_bytes), f"{cfg} {s.tokens_per_s:,.0f} tok/s"
        batch.append(create_trial(params=choices_of(cfg), distributions=dists, values=[s.tokens_per_s, s.peak_bytes],
                                  user_attrs=_analytic_attrs(cfg, s),
                                  system_attrs={f"constraints:{CONSTRAINT}": s.overshoot_bytes}))
        if progress is not None and (i % 256 == 0 or i == len(configs)):
            progress(i, len(configs), best_name)
    study.add_trials(batch)
    return study


def sampled_study(space: TuneSpace, opts: TuneOptions, storage: optuna.storages.BaseStorage, name: str,
                  runnable: int, progress: Progress | None = None) -> optuna.Study:
    """TPE over the space into the persistent study until it holds `opts.trials` evaluated plans (at most the
    space's `runnable` plans; across resumes and processes sharing it), each evaluated once. A proposal that
    names no plan (TP x PP that does not divide the GPUs, ZeRO-3 under AutoTP, ...) is recorded, infeasible,
    and costs no budget either: in the product of the dimensions most points name no plan (4,032 points, 738
    plans for a 7B LoRA on 8 GPUs)."""
    assert opts.trials is not None
    sampler = TPESampler(seed=opts.seed, multivariate=True)
    study = load_study(storage, name, space, measured=False, sampler=sampler)
    seen: dict[tuple[Choice, ...], tuple[int, float]] = {}  # point -> (its first trial, any process; constraint)
    plans: set[int] = set()  # the trials that evaluated a plan: the budget

    def note(t: FrozenTrial) -> None:
        if t.params and "duplicate_of" not in t.user_attrs and t.state.is_finished():
            seen.setdefault(params_key(t.params), (t.number, t.constraints.get(CONSTRAINT, 0.0)))
            if t.state is TrialState.COMPLETE:
                plans.add(t.number)

    for t in study.get_trials(deepcopy=False):
        note(t)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("worker", WORKER)
        params = _suggest(trial, space)
        twin = seen.get(params_key(params))
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin[0])
            trial.set_user_attr("reason", f"same plan as trial {twin[0]}: not evaluated again")
            trial.set_constraint(CONSTRAINT, twin[1])  # TPE sees the point as what it is, not as a fresh pruning
            raise optuna.TrialPruned(f"duplicate of trial {twin[0]}")
        cfg, reason = space.config_for(params)
        if cfg is None:
            seen[params_key(params)] = (trial.number, NO_PLAN_OVERSHOOT)
            trial.set_user_attr("reason", reason)
            trial.set_constraint(CONSTRAINT, NO_PLAN_OVERSHOOT)
            raise optuna.TrialPruned(reason)
        s = analytic_score(cfg, opts.limits, opts.cal)
        seen[params_key(params)] = (trial.number, s.overshoot_bytes)
        for k, v in _analytic_attrs(cfg, s).items():
            trial.set_user_attr(k, v)
        trial.set_constraint(CONSTRAINT, s.overshoot_bytes)
        return s.tokens_per_s, s.peak_bytes

    def stop_at_budget(study: optuna.Study, t: FrozenTrial) -> None:
        # the whole study counts (other processes may share it): their points are not evaluated again either
        for other in study.get_trials(deepcopy=False):
            note(other)
        if len(plans) >= budget:
            study.stop()

    budget = min(opts.trials, runnable)  # TPE cannot find more plans than exist
    if len(plans) < budget:
        # proposals that are duplicates or name no plan cost no evaluation; bound them all the same (a converged
        # TPE proposes little else)
        study.optimize(objective, n_trials=20 * opts.trials, timeout=opts.timeout_s,
                       callbacks=[stop_at_budget, _progress_callback(progress, opts.trials)])
    return study


def evaluated(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that evaluated a plan or named an invalid one (not the duplicates)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and "duplicate_of" not in t.user_attrs]


def _progress_callback(progress: Progress | None, total: int | None) -> Callable:
    """Plans evaluated so far (the budget's count: duplicates and points that name no plan are not counted) and
    the best so far, kept incrementally (re-reading every trial from SQLite after each one is quadratic)."""
    state: dict[str, Any] = {"best": None, "done": None}

    def consider(t: FrozenTrial) -> None:
        if feasible(t):
            key = (t.values[0], -float(t.user_attrs.get("peak_bytes", 0.0)))
            if state["best"] is None or key > state["best"][0]:
                state["best"] = (key, f"{t.user_attrs.get('name', '')} {t.values[0]:,.0f} tok/s")

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if progress is None:
            return
        if state["done"] is None:
            everything = study.get_trials(deepcopy=False)
            for t in everything:
                consider(t)
            state["done"] = sum(1 for t in everything if t.state is TrialState.COMPLETE)
        else:
            consider(trial)
            state["done"] += trial.state is TrialState.COMPLETE
        progress(state["done"], total, state["best"][1] if state["best"] else "")
    return callback


def feasible(t: FrozenTrial) -> bool:
    return t.state is TrialState.COMPLETE and float(t.user_attrs.get("overshoot_bytes", 0.0)) <= 0


