"""The autotuner: Optuna studies over `planner.tune_space`, analytical first, measured on request.

Analytical study (two objectives: the time model's tokens/s, maximized, and the memory model's peak
bytes per GPU, minimized). Plans that do not fit are kept as evaluated trials whose Optuna constraint
(`constraints_func`, the excess in bytes over GPU, host or NVMe capacity) is positive, so samplers and
`best_trials` treat them as infeasible; a choice combination that names no valid plan is pruned with its
reason in the trial's user_attrs. Neither gets a made-up score. When the space holds at most `trials`
runnable plans (or no `trials` is given) every plan is evaluated (the exhaustive grid, the same
enumeration as `planner.search.plan`) in an in-memory study: a model evaluation costs ~0.1 ms, a SQLite
trial write ~15 ms, so persisting thousands of them would cost more than recomputing. Otherwise TPE
(Watanabe 2023, "Tree-structured Parzen Estimator: Understanding Its Algorithm Components") samples
`trials` plans into the persistent study.

Measured study (one objective: measured tokens/s): the best analytical plans the trial worker can run
are enqueued first, then TPE proposes further plans from the same space; each runs a short real trial
(`runner.trial.run_trial`) in its own process group with a timeout. OOM, crashes and hangs mark the
trial FAIL with `failure`/`reason` user attrs and the study goes on; measured peak memory and the
memory model's prediction are stored on every trial for calibration. The measured study lives in the
storage (SQLite by default), so a killed or interrupted tune resumes: finished parameter sets are
neither enqueued nor run again, and several processes (or nodes, with a server database) share it.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState, create_trial

from planner.calibration import DEFAULT, Calibration
from planner.errors import PlanError
from planner.estimate import Estimate, Limits, estimate
from planner.strategy import TrainConfig
from planner.tune_result import TrialRow, TuneResult
from planner.tune_space import (
    PARAM_NAMES,
    Choice,
    TuneSpace,
    analytic_score,
    choices_of,
    pareto_front,
    rank_key,
    trial_label,
)
from runner import trial as trial_mod

DEFAULT_STORAGE = "sqlite:///ftplan-tune.db"
MEMORY_STORAGE = "memory"
DEFAULT_MEASURED_TRIALS = 8
# Optuna >= 5 constraints: system attr "constraints:<key>" (Trial.set_constraint); feasible when all <= 0
_CONSTRAINT = "overshoot_bytes"
# RDB heartbeats: a trial whose process died (SIGKILL) is failed after the grace period, then re-run
_HEARTBEAT_S, _GRACE_S = 5, 20

WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a trial of a shared study
Progress = Callable[[int, int | None, str], None]  # (trials done, trials planned or None, best so far)


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    trials: int | None = None  # analytical: sampled trials (None: exhaustive); measured: real trials
    measure: bool = False
    top: int | None = None  # measured: best analytical plans enqueued first (default: half the trials)
    storage: str | None = None  # SQLAlchemy URL, or "memory"; None: sqlite:///ftplan-tune.db
    study: str | None = None  # None: derived from model, GPUs, global batch and sequence length
    timeout_s: float | None = None
    seed: int = 0
    trial_steps: int = 3
    trial_warmup_steps: int = 1
    trial_timeout_s: float = 300.0
    limits: Limits = field(default_factory=Limits)
    cal: Calibration = DEFAULT


class _MeasuredFailure(Exception):
    """A real trial ended in OOM, a crash or a hang; optimize(catch=...) records it as FAIL."""


# ---------------------------------------------------------------- storage and studies

def open_storage(url: str | None) -> tuple[optuna.storages.BaseStorage, str]:
    url = url or DEFAULT_STORAGE
    if url == MEMORY_STORAGE:
        return optuna.storages.InMemoryStorage(), url
    if "://" not in url:
        raise PlanError(f"--storage {url!r} is not a database URL: use sqlite:///PATH.db, "
                        f"postgresql://USER@HOST/DB or '{MEMORY_STORAGE}'")
    engine_kwargs: dict[str, Any] = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                     else {"pool_pre_ping": True})
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                     heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S)
            return storage, url
        except Exception as exc:  # sqlalchemy raises driver-specific types (OperationalError, ArgumentError, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # two processes creating the same new database race on its tables; the loser retries
            if attempt < 2 and any(m in first for m in ("already exists", "UNIQUE constraint", "locked")):
                time.sleep(1.0)
                continue
            raise PlanError(f"cannot open tune storage {url}: {first[:200]}") from None
    raise AssertionError("unreachable")


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
        for k, v in mine.items():
            study.set_user_attr(k, v)
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
    return study


def _distributions(space: TuneSpace) -> dict[str, optuna.distributions.CategoricalDistribution]:
    return {d.name: optuna.distributions.CategoricalDistribution(d.choices) for d in space.dimensions}


def _suggest(trial: optuna.Trial, space: TuneSpace) -> dict[str, Choice]:
    return {d.name: trial.suggest_categorical(d.name, d.choices) for d in space.dimensions}


# ---------------------------------------------------------------- analytical phase

def _analytic_attrs(cfg: TrainConfig, s: Any) -> dict[str, Any]:
    attrs = {"name": trial_label(cfg), "tokens_per_s": s.tokens_per_s, "step_time_s": s.step_time_s,
             "peak_bytes": s.peak_bytes, "overshoot_bytes": s.overshoot_bytes, "grad_accum": cfg.grad_accum}
    if s.overshoot_bytes > 0:
        attrs["reason"] = "; ".join(s.estimate.fit_reasons) or "does not fit"
    return attrs


def exhaustive_study(space: TuneSpace, opts: TuneOptions, progress: Progress | None = None) -> optuna.Study:
    """Every runnable plan as a finished trial of an in-memory two-objective study."""
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="analytical",
                                sampler=optuna.samplers.RandomSampler(seed=opts.seed))
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
                                  system_attrs={f"constraints:{_CONSTRAINT}": s.overshoot_bytes}))
        if progress is not None and (i % 256 == 0 or i == len(configs)):
            progress(i, len(configs), best_name)
    study.add_trials(batch)
    return study


def sampled_study(space: TuneSpace, opts: TuneOptions, storage: optuna.storages.BaseStorage, name: str,
                  progress: Progress | None = None) -> optuna.Study:
    """TPE over the space into the persistent study, `opts.trials` trials in all (across resumes and
    processes sharing it)."""
    assert opts.trials is not None
    sampler = TPESampler(seed=opts.seed, multivariate=True)
    study = load_study(storage, name, space, measured=False, sampler=sampler)
    _fail_stale(study)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("worker", WORKER)
        params = _suggest(trial, space)
        cfg, reason = space.config_for(params)
        if cfg is None:
            trial.set_user_attr("reason", reason)
            trial.set_constraint(_CONSTRAINT, 1.0)  # names no valid plan: infeasible by construction
            raise optuna.TrialPruned(reason)
        s = analytic_score(cfg, opts.limits, opts.cal)
        for k, v in _analytic_attrs(cfg, s).items():
            trial.set_user_attr(k, v)
        trial.set_constraint(_CONSTRAINT, s.overshoot_bytes)
        return s.tokens_per_s, s.peak_bytes

    done = _finished(study)
    remaining = max(0, opts.trials - done)
    if remaining:
        stop = optuna.study.MaxTrialsCallback(opts.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        study.optimize(objective, n_trials=remaining, timeout=opts.timeout_s,
                       callbacks=[stop, _progress_callback(progress, opts.trials, measured=False)])
    return study


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _fail_stale(study: optuna.Study) -> None:
    if isinstance(study._storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)


def _progress_callback(progress: Progress | None, total: int | None, *, measured: bool) -> Callable:
    """Best so far, kept incrementally (re-reading every trial from SQLite after each one is quadratic)."""
    state: dict[str, Any] = {"best": None, "done": None}

    def consider(t: FrozenTrial) -> None:
        if _feasible(t):
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
            state["done"] = sum(1 for t in everything if t.state.is_finished())
        else:
            consider(trial)
            state["done"] += 1
        done = _measured_count(study) if measured else state["done"]
        progress(done, total, state["best"][1] if state["best"] else "")
    return callback


def _feasible(t: FrozenTrial) -> bool:
    return t.state is TrialState.COMPLETE and float(t.user_attrs.get("overshoot_bytes", 0.0)) <= 0


# ---------------------------------------------------------------- measured phase

def _measured_count(study: optuna.Study) -> int:
    """Real trials that produced a verdict (a throughput, or OOM / crash / hang)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
               if t.state is TrialState.COMPLETE or "failure" in t.user_attrs)


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(n) == b.get(n) for n in PARAM_NAMES)


def _holder(study: optuna.Study, params: dict[str, Any], exclude: int | None = None) -> FrozenTrial | None:
    """A trial that measured, or is measuring, or will measure `params` (stale-failed ones do not count)."""
    for t in study.get_trials(deepcopy=False):
        if t.number == exclude or not _same_params(t.params or t.system_attrs.get("fixed_params", {}), params):
            continue
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) or \
                (t.state is TrialState.FAIL and "failure" in t.user_attrs):
            return t
    return None


def spread(ranked: list[tuple[TrainConfig, Any]], n: int) -> list[TrainConfig]:
    """The `n` plans measured first: the analytically best plan of each strategy (DDP, Z1, Z3+off-opt,
    FSDP, ...) in rank order, then the second best of each, and so on. The time model is least sure across
    engines (communication, framework overheads), and the top of a plain ranking is often one strategy
    at several micro-batches; measuring one plan per strategy first gives TPE contrasts to learn from."""
    by_strategy: dict[str, list[TrainConfig]] = {}
    for cfg, _ in ranked:
        by_strategy.setdefault(cfg.strategy_name(), []).append(cfg)
    out: list[TrainConfig] = []
    depth = 0
    while len(out) < n and any(len(v) > depth for v in by_strategy.values()):
        out += [v[depth] for v in by_strategy.values() if len(v) > depth][: n - len(out)]
        depth += 1
    return out


def measured_study(space: TuneSpace, ranked: list[tuple[TrainConfig, Any]], opts: TuneOptions,
                   storage: optuna.storages.BaseStorage, name: str, progress: Progress | None = None
                   ) -> optuna.Study:
    """Real trials: the best analytical plans first (`spread`), then TPE; `ranked` are the fitting (cfg, Score),
    best first."""
    trials = opts.trials or DEFAULT_MEASURED_TRIALS
    top = min(opts.top if opts.top is not None else math.ceil(trials / 2), trials, len(ranked))
    predicted = {str(cfg): s for cfg, s in ranked}
    sampler = TPESampler(seed=opts.seed, multivariate=True, n_startup_trials=max(1, top))
    study = load_study(storage, name, space, measured=True, sampler=sampler)
    _fail_stale(study)
    for cfg in spread(ranked, top):
        params = choices_of(cfg)
        if _holder(study, params) is None:
            study.enqueue_trial(params, user_attrs={"source": "analytical top"})

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", WORKER)
        params = _suggest(trial, space)
        cfg, reason = space.config_for(params)
        if cfg is None:
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason)
        s = predicted.get(str(cfg))
        if s is None:
            trial.set_user_attr("reason", "the memory model predicts it does not fit")
            raise optuna.TrialPruned("predicted not to fit")
        twin = _holder(study, params, exclude=trial.number)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin.number)
            trial.set_user_attr("reason", f"same plan as trial {twin.number}: not run again")
            raise optuna.TrialPruned(f"duplicate of trial {twin.number}")
        trial.set_user_attr("name", trial_label(cfg))
        trial.set_user_attr("grad_accum", cfg.grad_accum)
        trial.set_user_attr("predicted_tokens_per_s", s.tokens_per_s)
        trial.set_user_attr("predicted_peak_bytes", s.peak_bytes)
        out = trial_mod.run_trial(cfg, steps=opts.trial_steps, warmup_steps=opts.trial_warmup_steps,
                                  timeout_s=opts.trial_timeout_s)
        trial.set_user_attr("wall_s", out.wall_s)
        if not out.ok:
            assert out.failure is not None
            trial.set_user_attr("failure", out.failure.value)
            trial.set_user_attr("reason", out.reason)
            raise _MeasuredFailure(f"{cfg}: {out.failure.value}: {out.reason}")
        trial.set_user_attr("peak_bytes", out.peak_bytes)
        trial.set_user_attr("peak_rss_bytes", out.peak_rss_bytes)
        trial.set_user_attr("step_time_s", out.step_time_s)
        return out.tokens_per_s

    def stop_when_done(study: optuna.Study, _t: FrozenTrial) -> None:
        measured = _measured_count(study)
        if measured >= trials or measured >= len(ranked):
            study.stop()

    if _measured_count(study) < min(trials, len(ranked)):
        # pruned proposals (duplicates, plans that do not fit) cost nothing; bound them all the same
        study.optimize(objective, n_trials=20 * trials + top, timeout=opts.timeout_s, catch=(_MeasuredFailure,),
                       callbacks=[stop_when_done, _progress_callback(progress, trials, measured=True)])
    return study


# ---------------------------------------------------------------- the whole tune

def _row(t: FrozenTrial, phase: str) -> TrialRow:
    a = t.user_attrs
    if t.state is TrialState.COMPLETE:
        state = "complete" if _feasible(t) else "infeasible"
    elif t.state is TrialState.PRUNED:
        state = "duplicate" if "duplicate_of" in a else "infeasible"
    elif t.state is TrialState.FAIL:
        state = "failed"
    else:
        state = t.state.name.lower()
    value = t.values[0] if t.values else None
    measured = phase == "measured"
    return TrialRow(phase=phase, number=t.number, state=state, name=str(a.get("name", "")), params=dict(t.params),
                    tokens_per_s=value, peak_bytes=a.get("peak_bytes"),
                    predicted_tokens_per_s=a.get("predicted_tokens_per_s") if measured else value,
                    predicted_peak_bytes=a.get("predicted_peak_bytes") if measured else a.get("peak_bytes"),
                    reason=str(a.get("reason", "") or (f"{a['failure']}" if "failure" in a else "")),
                    wall_s=a.get("wall_s"))


def _estimate_for(space: TuneSpace, params: dict[str, Any], opts: TuneOptions) -> Estimate:
    cfg, reason = space.config_for(params)
    if cfg is None:
        raise PlanError(f"the winning trial no longer names a valid plan: {reason}")
    return estimate(cfg, opts.limits, opts.cal)


def _nothing_fits(space: TuneSpace, rows: list[TrialRow], what: str) -> PlanError:
    reasons: dict[str, int] = {}
    for r in rows:
        key = "does not fit in GPU memory" if "per GPU" in r.reason else (r.reason or r.state)
        reasons[key] = reasons.get(key, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:2]
    detail = "; ".join(f"{n} x {k}" for k, n in top)
    return PlanError(f"nothing in the search space {what} for {space.base.model.name} on {space.base.cluster}"
                     f"{': ' + detail if detail else ''}")


def tune(space: TuneSpace, opts: TuneOptions, progress: Progress | None = None) -> TuneResult:
    if opts.measure:
        from profiler.launch import check_device

        check_device(space.base)  # --gpus 8xA800 --measure on a machine without them: one clear error
    storage, url = open_storage(opts.storage)
    name = opts.study or default_study_name(space)
    runnable = sum(1 for _ in space.feasible())
    if runnable == 0:
        raise PlanError(f"the search space holds no valid plan for {space.base.model.name} on {space.base.cluster}"
                        + (" that a measured trial can run (TP = PP = 1, no offload, no QLoRA)"
                           if opts.measure else ""))
    exhaustive = opts.measure or opts.trials is None or opts.trials >= runnable
    if exhaustive:
        if not opts.measure:
            # the persistent study is still opened: its identity is checked even when nothing is stored in it
            load_study(storage, name, space, measured=False, sampler=optuna.samplers.RandomSampler())
        analytical = exhaustive_study(space, opts, None if opts.measure else progress)
    else:
        analytical = sampled_study(space, opts, storage, name, progress)
    a_trials = analytical.get_trials(deepcopy=False)
    a_rows = [_row(t, "analytical") for t in a_trials]
    feasible = [t for t in a_trials if _feasible(t)]
    points = [(t.values[0], t.values[1]) for t in feasible]
    pareto = [_row(feasible[i], "analytical") for i in pareto_front(points)]
    if not feasible:
        raise _nothing_fits(space, a_rows, "fits")
    feasible.sort(key=lambda t: rank_key(t.values[0], t.values[1]))
    measured_s = 0.0
    if not opts.measure:
        best_t = feasible[0]
        rows = a_rows
        completed = len(feasible)
        failed = sum(1 for t in a_trials if t.state is TrialState.FAIL)
        infeasible = len(a_trials) - completed - failed
        best_row = _row(best_t, "analytical")
        best = _estimate_for(space, best_t.params, opts)
    else:
        ranked = []
        for t in feasible:
            cfg, _ = space.config_for(t.params)
            assert cfg is not None
            ranked.append((cfg, analytic_score(cfg, opts.limits, opts.cal)))
        study = measured_study(space, ranked, opts, storage, f"{name}:measured", progress)
        m_trials = study.get_trials(deepcopy=False)
        rows = [_row(t, "measured") for t in m_trials]
        ok = [t for t in m_trials if t.state is TrialState.COMPLETE]
        completed = len(ok)
        failed = sum(1 for t in m_trials if t.state is TrialState.FAIL and "failure" in t.user_attrs)
        infeasible = sum(1 for t in m_trials if t.state is TrialState.PRUNED)
        measured_s = sum(float(t.user_attrs.get("wall_s", 0.0)) for t in m_trials)
        if not ok:
            raise PlanError(f"no measured trial succeeded ({failed} failed"
                            + (f"; first: {rows[0].reason}" if rows else "") + f"); see study {name}:measured")
        best_t = max(ok, key=lambda t: t.values[0])
        best_row = _row(best_t, "measured")
        best = _estimate_for(space, best_t.params, opts)
    return TuneResult(study=name, storage=url, measured=opts.measure, sampler="exhaustive" if exhaustive else "tpe",
                      space_points=space.size, runnable_plans=runnable, best=best, best_row=best_row, rows=rows,
                      pareto=pareto, trials_completed=completed, trials_failed=failed, trials_infeasible=infeasible,
                      measured_trial_s=measured_s)


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
