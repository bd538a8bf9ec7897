"""The measured tune: rank analytically, measure the leaders, fit the calibration, re-rank, repeat.

One loop, the same in every worker (`ftplan tune --measure` started on one machine or on several
against one `--storage`):

1. Reap: RUNNING trials whose worker went silent for the grace period become FAIL, reason "worker lost"
   (`storage.reap_lost`); their plans go first in the next round.
2. Take work: pop a WAITING trial (the storage's compare-and-set WAITING -> RUNNING: Optuna's
   `set_trial_state_values` returns False to every worker but one), run it with a heartbeat, record
   the measurement (or OOM / crash / hang) on it.
3. Nothing waiting: plan the next round. A round is claimed by creating the study `NAME:round:R`
   (study names are unique in RDB and journal storages alike, so exactly one worker plans round R),
   and rounds are planned one after another (round R+1 waits for round R's `done` mark), so one
   writer decides what is enqueued: a plan is never enqueued while another trial holds it (waiting,
   running, measured or failed for a reason of its own), and the enqueued plus held verdicts never
   exceed `--trials`, the budget of the whole study.

Rounds are successive halving over candidates (Jamieson & Talwalkar 2016, "Non-stochastic Best Arm
Identification and Hyperparameter Optimization", Alg. 1, applied to the candidate list): round 0 takes
`--top` plans (default half the budget) spread over strategies (`spread`); each later round takes half
of the remaining budget, the best of the unmeasured plans re-ranked with the calibration fitted from
every measured trial so far (`profiler.calibrate.fit_time`: compute and communication efficiency; the
report adds the memory factors of `fit`) and, per strategy, the geometric-mean ratio measured /
calibrated of that strategy's measured plans, shrunk towards 1 by n / (n + 1) (a partial-pooling
estimate: one measurement moves a strategy half-way). Each trial times `--trial-steps` steps after its
warm-up and records the range of its steps (tokens/s at its slowest and fastest step) and their spread.
Noise decides nothing alone: a plan's estimate pools its trials, its interval is -+ one standard error at the
trial-to-trial spread this study's repeats show (15% before any repeat: a shared machine's slow spells outlast a
trial, so a trial's own step range understates it), and the last `CONFIRM_SHARE` of the budget is kept for
confirmation rounds, each one repeat trial of the leader (the plan whose interval's lower end is highest) or of
the contender whose interval overlaps it, whichever has fewer trials (the leader on a tie), until the two
intervals separate; a reserve not needed goes to the next plans. An explicit `--top` is measured in full in round 0
even where it leaves less than the reserve (`--trials 3 --top 3` measures three plans and confirms nothing): the
user asked for those plans; `--trials` above `--top` leaves room to confirm. The winner is
the plan with the best lower bound (`rank_by_lower_bound`). The ranking,
the calibration and the round plans live in the study's user attrs, so every worker and
`optuna-dashboard` see them; a worker whose ranked plans differ from the study's (other options, another
ftplan version) refuses to join.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState, create_trial

from planner.calibration import Calibration
from planner.errors import PlanError
from planner.runnable import runnable
from planner.strategy import TrainConfig
from planner.tune_space import PARAM_NAMES, Choice, Score, TuneSpace, choices_of, params_key, trial_label
from runner import trial as trial_mod
from runner.tuning.results import DEFAULT_MEASURED_TRIALS, WORKER, Progress, TuneOptions
from runner.tuning.storage import WORKER_LOST, Retry, heartbeat, reap_lost

_DEFAULT_SPREAD = 0.15  # log-spread of the model before three trials are measured (the issue's +-15% noise)
_POLL_S = 1.0

Key = tuple[Choice, ...]


def spread(ranked: list[tuple[TrainConfig, Any]], n: int) -> list[TrainConfig]:
    """The `n` plans measured first: the analytically best plan of each strategy (DDP, Z1, Z3+off-opt,
    FSDP, ...) in rank order, then the second best of each, and so on. The time model is least sure across
    engines (communication, framework overheads), and the top of a plain ranking is often one strategy
    at several micro-batches; measuring one plan per strategy first gives the calibration contrasts."""
    by_strategy: dict[str, list[TrainConfig]] = {}
    for cfg, _ in ranked:
        by_strategy.setdefault(cfg.strategy_name(), []).append(cfg)
    out: list[TrainConfig] = []
    depth = 0
    while len(out) < n and any(len(v) > depth for v in by_strategy.values()):
        out += [v[depth] for v in by_strategy.values() if len(v) > depth][: n - len(out)]
        depth += 1
    return out


def key_of(params: dict[str, Any]) -> Key:
    return params_key({n: params[n] for n in PARAM_NAMES})


def is_verdict(t: FrozenTrial) -> bool:
    """A real trial that produced a throughput, or an OOM / crash / hang of its own."""
    return t.state is TrialState.COMPLETE or (t.state is TrialState.FAIL and "failure" in t.user_attrs)


def holds(t: FrozenTrial) -> bool:
    """The trial owns its plan: it will run, runs, or ran it (a lost trial hands its plan back)."""
    return t.state in (TrialState.WAITING, TrialState.RUNNING) or is_verdict(t)


def calibration_dict(cal: Calibration) -> dict[str, Any]:
    return {f.name: getattr(cal, f.name) for f in fields(cal) if f.name not in ("key", "source")}


@dataclass(frozen=True, kw_only=True)
class Candidate:
    cfg: TrainConfig
    predicted_tokens_per_s: float  # the time model with the user's calibration
    predicted_peak_bytes: float
    calibrated_tokens_per_s: float
    steps: int
    source: str
    rerun_of: int | None = None
    repeat_of: int | None = None  # a confirmation repeat of this trial's plan


# ---------------------------------------------------------------- re-ranking from measurements

@dataclass(frozen=True, kw_only=True)
class Model:
    """What the measured trials so far say about the time model."""

    cal: Calibration
    ratio_by_strategy: dict[str, tuple[float, int]]  # geometric mean measured / calibrated, count
    log_spread: float  # standard deviation of log(measured / corrected prediction) over the measured trials
    measured: int

    def predict(self, cfg: TrainConfig) -> float:
        from planner.timing import step_time

        tps = cfg.tokens_per_step / step_time(cfg, self.cal).step_time_s
        ratio, n = self.ratio_by_strategy.get(cfg.strategy_name(), (1.0, 0))
        return tps * ratio ** (n / (n + 1))


def fit_model(done: list[tuple[TrainConfig, FrozenTrial]], base: Calibration, with_memory: bool = False) -> Model:
    if not done:
        return Model(cal=base, ratio_by_strategy={}, log_spread=_DEFAULT_SPREAD, measured=0)
    from planner.timing import step_time
    from profiler.calibrate import Profile, fit, fit_time

    profiles = [Profile(config=cfg, peak_bytes=float(t.user_attrs["peak_bytes"]),
                        step_time_s=float(t.user_attrs["step_time_s"])) for cfg, t in done]
    # the rounds re-rank by time: the time factors only (the memory fit is for the final report)
    cal = fit(profiles) if with_memory else fit_time(profiles, base)
    logs: dict[str, list[float]] = {}
    for cfg, t in done:
        pred_s = step_time(cfg, cal).step_time_s
        logs.setdefault(cfg.strategy_name(), []).append(math.log(pred_s / float(t.user_attrs["step_time_s"])))
    ratios = {k: (math.exp(statistics.fmean(v)), len(v)) for k, v in logs.items()}
    model = Model(cal=cal, ratio_by_strategy=ratios, log_spread=_DEFAULT_SPREAD, measured=len(done))
    residuals = [math.log(float(t.values[0]) / model.predict(cfg)) for cfg, t in done]
    spread_ = statistics.pstdev(residuals) if len(residuals) >= 3 else _DEFAULT_SPREAD
    return Model(cal=cal, ratio_by_strategy=ratios, log_spread=max(spread_, 0.02), measured=len(done))


# Share of the budget kept back from the plan rounds for confirmation rounds (at least one trial)
CONFIRM_SHARE = 0.3


def confirm_reserve(budget: int) -> int:
    return max(1, round(CONFIRM_SHARE * budget)) if budget > 2 else 0


@dataclass(frozen=True, kw_only=True)
class PlanInterval:
    """What the completed trials of one plan measured: each trial's median-step tokens/s and every step's. Its
    estimate is the geometric mean of the trials' medians, its interval that estimate -+ one standard error,
    log-spread / sqrt(trials), with the study's trial-to-trial log-spread (`trial_noise`)."""

    key: Key
    trials: tuple[FrozenTrial, ...]
    step_tokens_per_s: tuple[float, ...]
    noise: float = _DEFAULT_SPREAD

    @property
    def medians(self) -> tuple[float, ...]:
        return tuple(float(t.values[0]) for t in self.trials)

    @property
    def mean_log(self) -> float:
        return statistics.fmean(math.log(x) for x in self.medians)

    @property
    def estimate(self) -> float:
        return math.exp(self.mean_log)

    @property
    def stderr(self) -> float:
        return self.noise / math.sqrt(len(self.trials))

    @property
    def low(self) -> float:
        return math.exp(self.mean_log - self.stderr)

    @property
    def high(self) -> float:
        return math.exp(self.mean_log + self.stderr)

    @property
    def spread(self) -> float:
        """Slowest to fastest step over all its trials."""
        return max(self.step_tokens_per_s) / min(self.step_tokens_per_s) - 1.0

    def overlaps(self, other: PlanInterval) -> bool:
        return self.low <= other.high and other.low <= self.high


def _step_tokens_per_s(t: FrozenTrial) -> list[float]:
    """Tokens/s of each timed step of a completed trial (its median alone for trials stored without steps)."""
    a = t.user_attrs
    times = a.get("step_times_s") or []
    tokens = float(t.values[0]) * float(a["step_time_s"]) if "step_time_s" in a else 0.0
    return [tokens / float(x) for x in times if float(x) > 0] or [float(t.values[0])]


def trial_noise(groups: Iterable[list[float]]) -> float:
    """The trial-to-trial log-spread of one plan's repeated measurements, pooled over the plans measured more than
    once (standard deviation with n - 1); `_DEFAULT_SPREAD` until a plan has been repeated. Steps within one trial
    vary less than trials do: a shared machine's slow spells last longer than a trial."""
    ss, dof = 0.0, 0
    for values in groups:
        if len(values) >= 2:
            logs = [math.log(v) for v in values]
            m = statistics.fmean(logs)
            ss += sum((x - m) ** 2 for x in logs)
            dof += len(logs) - 1
    return max(math.sqrt(ss / dof), 0.01) if dof else _DEFAULT_SPREAD


def plan_intervals(trials: Iterable[FrozenTrial]) -> list[PlanInterval]:
    """One interval per measured plan, pooling all its completed trials."""
    by: dict[Key, list[FrozenTrial]] = {}
    for t in trials:
        if t.state is TrialState.COMPLETE and t.params and t.values:
            by.setdefault(key_of(t.params), []).append(t)
    noise = trial_noise([float(t.values[0]) for t in ts] for ts in by.values())
    return [PlanInterval(key=k, trials=tuple(ts), noise=noise,
                         step_tokens_per_s=tuple(x for t in ts for x in _step_tokens_per_s(t))) for k, ts in by.items()]


def rank_by_lower_bound(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Completed trials best plan first, a plan's rank being its interval's lower end (then its estimate); each
    plan's trials together, its best trial first."""
    out: list[FrozenTrial] = []
    for iv in sorted(plan_intervals(trials), key=lambda iv: (-iv.low, -iv.estimate)):
        out += sorted(iv.trials, key=lambda t: -t.values[0])
    return out


def contest(trials: Iterable[FrozenTrial]) -> tuple[PlanInterval, PlanInterval] | None:
    """(leader, contender): the plan with the best lower bound and the best other plan whose interval overlaps it;
    None when the leader's interval is clear of every other plan's (or fewer than two plans were measured)."""
    ivs = sorted(plan_intervals(trials), key=lambda iv: (-iv.low, -iv.estimate))
    if len(ivs) < 2:
        return None
    leader = ivs[0]
    rivals = [iv for iv in ivs[1:] if iv.overlaps(leader)]
    return (leader, max(rivals, key=lambda iv: iv.estimate)) if rivals else None


def _leader_low(done: list[tuple[TrainConfig, FrozenTrial]]) -> float | None:
    """The leader's lower bound: the slowest step, as tokens/s, of the plan whose pooled steps' slowest is best."""
    ivs = plan_intervals(t for _, t in done)
    return max(iv.low for iv in ivs) if ivs else None


# ---------------------------------------------------------------- the study

@dataclass
class MeasuredTune:
    space: TuneSpace
    ranked: list[tuple[TrainConfig, Score]]  # fitting plans, analytically best first
    opts: TuneOptions
    storage: optuna.storages.BaseStorage
    study: optuna.Study
    retry: Retry
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self.budget = self.opts.trials or DEFAULT_MEASURED_TRIALS
        self.study_id = self.storage.get_study_id_from_name(self.study.study_name)
        self.by_key = {key_of(choices_of(cfg)): (cfg, s) for cfg, s in self.ranked}
        self.dists = {d.name: optuna.distributions.CategoricalDistribution(d.choices) for d in self.space.dimensions}
        self._round_seen: dict[int, float] = {}
        self._deadline = None if self.opts.timeout_s is None else time.monotonic() + self.opts.timeout_s

    # storage reads and writes, each retried with backoff ------------------------------------------

    def trials(self) -> list[FrozenTrial]:
        return self.retry.call(lambda: self.storage.get_all_trials(self.study_id, deepcopy=False), "reading trials")

    def _set(self, trial_id: int, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            self.retry.call(lambda k=k, v=v: self.storage.set_trial_user_attr(trial_id, k, v), "recording a trial")

    # the loop -------------------------------------------------------------------------------------

    def _check_space(self) -> None:
        """Workers of one study must search the same plans (the same options and ftplan version)."""
        labels = [trial_label(cfg) for cfg, _ in self.ranked]
        digest = hashlib.sha256(json.dumps(labels).encode()).hexdigest()[:16]
        theirs = self.retry.call(lambda: self.storage.get_study_user_attrs(self.study_id), "reading the study")
        if "space_digest" not in theirs:
            self.retry.call(lambda: self.storage.set_study_user_attr(self.study_id, "space_digest", digest),
                            "sharing the ranking")
        elif theirs["space_digest"] != digest:
            raise PlanError(f"study {self.study.study_name!r} was started with another search space or ranking "
                            f"(other --micro-batch / --engine / ... options or another ftplan version); start "
                            f"every worker with the same options, or pick another --study")

    def run(self) -> None:
        self._check_space()
        while True:
            self.retry.call(lambda: reap_lost(self.storage, self.study_id, self.opts.grace_period_s), "reaping")
            trials = self.trials()
            verdicts = sum(1 for t in trials if is_verdict(t))
            self._report(trials)
            if verdicts >= self.budget:
                return
            if self._deadline is not None and time.monotonic() > self._deadline:
                return
            mine = self._pop(trials)
            if mine is not None:
                self._measure(mine)
                continue
            if any(t.state is TrialState.RUNNING for t in trials):
                # a round's measurements decide the next one (synchronous halving): wait for them
                time.sleep(_POLL_S)
                continue
            planned = self._plan_round(trials)
            if planned == 0:  # nothing left to measure in the space
                return
            if planned is None:  # another worker plans the round
                time.sleep(_POLL_S)

    def _pop(self, trials: list[FrozenTrial]) -> FrozenTrial | None:
        for t in trials:
            if t.state is not TrialState.WAITING:
                continue
            try:
                won = self.retry.call(lambda t=t: self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING),
                                      "claiming a trial")
            except UpdateFinishedTrialError:
                continue
            if won:
                return t
        return None

    def _measure(self, t: FrozenTrial) -> None:
        tid = t._trial_id
        cfg, reason = self.space.config_for(t.params)
        with heartbeat(self.storage, tid, self.opts.heartbeat_s, self.retry):
            self._set(tid, {"worker": WORKER})
            if cfg is None:
                self._finish(tid, TrialState.FAIL, None, {"failure": "crash", "reason": reason})
                return
            steps = int(t.user_attrs.get("steps", self.opts.trial_steps))
            out = trial_mod.run_trial(cfg, steps=steps, warmup_steps=self.opts.trial_warmup_steps,
                                      timeout_s=self.opts.trial_timeout_s)
        attrs: dict[str, Any] = {"wall_s": out.wall_s}
        if not out.ok:
            assert out.failure is not None
            self._finish(tid, TrialState.FAIL, None, {**attrs, "failure": out.failure.value, "reason": out.reason})
            return
        tokens = cfg.tokens_per_step
        times = out.step_times_s or (out.step_time_s,)
        attrs.update({"peak_bytes": out.peak_bytes, "peak_rss_bytes": out.peak_rss_bytes,
                      "step_time_s": out.step_time_s, "step_times_s": list(times),
                      "tokens_per_s_low": tokens / max(times), "tokens_per_s_high": tokens / min(times),
                      "spread": max(times) / min(times) - 1.0})
        attrs["reason"] = ""  # a reaper that raced this trial's last heartbeat may have written "worker lost"
        self._finish(tid, TrialState.COMPLETE, out.tokens_per_s, attrs)

    def _finish(self, tid: int, state: TrialState, value: float | None, attrs: dict[str, Any]) -> None:
        try:
            self._set(tid, attrs)
            self.retry.call(lambda: self.storage.set_trial_state_values(
                tid, state, None if value is None else [value]), "recording a trial")
        except UpdateFinishedTrialError:
            pass  # reaped as lost while it ran (a longer silence than the grace period): its re-run decides

    # rounds ---------------------------------------------------------------------------------------

    def _rounds(self) -> list[Any]:  # optuna's FrozenStudy
        prefix = f"{self.study.study_name}:round:"
        studies = self.retry.call(self.storage.get_all_studies, "listing rounds")
        return sorted((s for s in studies if s.study_name.startswith(prefix)),
                      key=lambda s: int(s.study_name.rsplit(":", 1)[1]))

    def _plan_round(self, trials: list[FrozenTrial]) -> int | None:
        """Claim and plan the next round: the plans enqueued (0: none left), or None when another worker
        plans (or the previous round's planner has not finished: it is waited for up to the grace period)."""
        rounds = self._rounds()
        r = len(rounds)
        if rounds and not rounds[-1].user_attrs.get("done"):
            first_seen = self._round_seen.setdefault(r - 1, time.monotonic())
            if time.monotonic() - first_seen < self.opts.grace_period_s:
                return None
        held = {key_of(t.params) for t in trials if holds(t) and t.params}
        budget_left = self.budget - sum(1 for t in trials if holds(t))
        if all(k in held for k in self.by_key) and (budget_left <= 0 or contest(trials) is None):
            return 0  # every plan measured, failed on its own or in flight, and nothing left to confirm
        name = f"{self.study.study_name}:round:{r}"
        try:
            self.retry.call(lambda: self.storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name),
                            "claiming a round")
        except DuplicatedStudyError:
            return None
        round_id = self.retry.call(lambda: self.storage.get_study_id_from_name(name), "claiming a round")
        # the winner re-reads the study: the budget left counts what is held *now* (a round planned by
        # another worker since this one looked may have enqueued plans, and some may be running)
        fresh = self.trials()
        in_flight = any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in fresh)
        left = self.budget - sum(1 for t in fresh if holds(t))
        candidates = [] if in_flight or left <= 0 else self._confirmation(fresh, r, left)
        if not in_flight and left > 0 and not candidates:
            # plan rounds keep the reserve for the confirmation rounds; once only the reserve is left and the
            # leader's interval is clear of every other, it measures further plans. An explicit --top is the
            # user's first round: it is measured in full, and confirmation gets what the budget has left after it
            reserve = 0 if r == 0 and self.opts.top is not None else confirm_reserve(self.budget)
            candidates = self._candidates(fresh, r, left - reserve if left > reserve else left)
        for c in candidates:
            attrs = {"name": trial_label(c.cfg), "grad_accum": c.cfg.grad_accum, "round": r, "steps": c.steps,
                     "repeat_of": c.repeat_of,
                     "runnable": runnable(c.cfg),
                     "source": c.source, "predicted_tokens_per_s": c.predicted_tokens_per_s,
                     "predicted_peak_bytes": c.predicted_peak_bytes,
                     "calibrated_tokens_per_s": c.calibrated_tokens_per_s}
            if c.rerun_of is not None:
                attrs["rerun_of"] = c.rerun_of
            frozen = create_trial(state=TrialState.WAITING, params=choices_of(c.cfg), distributions=self.dists,
                                  user_attrs=attrs)
            self.retry.call(lambda f=frozen: self.study.add_trial(f), "enqueueing a plan")
        for k, v in (("worker", WORKER), ("plans", [trial_label(c.cfg) for c in candidates]), ("done", True)):
            self.retry.call(lambda k=k, v=v: self.storage.set_study_user_attr(round_id, k, v), "planning a round")
        return len(candidates) if candidates or not in_flight else None

    def _confirmation(self, trials: list[FrozenTrial], r: int, left: int) -> list[Candidate]:
        """A confirmation round: once the plan rounds have spent all but the reserve, one repeat trial of the leader
        or of its overlapping contender (the one with fewer pooled steps; the contender on a tie), while their
        intervals overlap and the budget lasts."""
        plans_measured = len(plan_intervals(trials))
        if left > confirm_reserve(self.budget) and plans_measured < len(self.by_key):
            return []  # plan rounds first
        held = {key_of(t.params) for t in trials if holds(t) and t.params}
        if any(t.state is TrialState.FAIL and not is_verdict(t) and t.params and key_of(t.params) not in held
               for t in trials):
            return []  # a lost worker's plan is re-run first
        pair = contest(trials)
        if pair is None:
            return []
        leader, rival = pair
        # the leader's claim first: the one with fewer trials, the leader on a tie
        again = rival if len(rival.trials) < len(leader.trials) else leader
        if again.key not in self.by_key:
            return []
        cfg, s = self.by_key[again.key]
        done = [(self.by_key[key_of(t.params)][0], t) for t in trials
                if t.state is TrialState.COMPLETE and key_of(t.params) in self.by_key]
        model = fit_model(done, self.opts.cal)
        self._share(model, r)
        first = min(again.trials, key=lambda t: t.number)
        return [Candidate(cfg=cfg, predicted_tokens_per_s=s.tokens_per_s, predicted_peak_bytes=s.peak_bytes,
                          calibrated_tokens_per_s=model.predict(cfg), steps=self.opts.trial_steps,
                          source=f"repeat: intervals of {trial_label(self.by_key[leader.key][0])} and "
                                 f"{trial_label(self.by_key[rival.key][0])} overlap",
                          repeat_of=first.number)]

    def _round_size(self, r: int, left: int) -> int:
        if r == 0:
            return min(left, self.opts.top if self.opts.top is not None else math.ceil(self.budget / 2))
        return min(left, max(1, math.ceil(left / 2)))

    def _candidates(self, trials: list[FrozenTrial], r: int, left: int) -> list[Candidate]:
        held = {key_of(t.params) for t in trials if holds(t) and t.params}
        lost = [t for t in trials if t.state is TrialState.FAIL and not is_verdict(t) and t.params
                and key_of(t.params) not in held]
        done = [(self.by_key[key_of(t.params)][0], t) for t in trials
                if t.state is TrialState.COMPLETE and key_of(t.params) in self.by_key]
        model = fit_model(done, self.opts.cal)
        self._share(model, r)
        size = self._round_size(r, left)
        out: list[Candidate] = []
        for t in lost:  # first the plans whose worker died, each once
            k = key_of(t.params)
            if k in self.by_key and all(key_of(choices_of(c.cfg)) != k for c in out):
                out.append(self._candidate(self.by_key[k][0], model, None, "re-run: " + WORKER_LOST, t.number))
        if r == 0 and not done:
            order: Iterable[TrainConfig] = spread(self.ranked, len(self.ranked))
        else:
            unmeasured = [cfg for cfg, _ in self.ranked if key_of(choices_of(cfg)) not in held]
            order = sorted(unmeasured, key=lambda c: -model.predict(c))
        chosen = {key_of(choices_of(c.cfg)) for c in out}
        low = _leader_low(done)
        for cfg in order:
            if len(out) >= size:
                break
            k = key_of(choices_of(cfg))
            if k in held or k in chosen:
                continue
            chosen.add(k)
            out.append(self._candidate(cfg, model, low, "analytical top" if not done else "re-ranked", None))
        return out[:size]

    def _candidate(self, cfg: TrainConfig, model: Model, leader_low: float | None, source: str,
                   rerun_of: int | None) -> Candidate:
        _, s = self.by_key[key_of(choices_of(cfg))]
        calibrated = model.predict(cfg) if model.measured else s.tokens_per_s
        # a candidate the model cannot tell from the leader is labelled so; confirmation rounds settle it
        close = leader_low is not None and calibrated * math.exp(model.log_spread) >= leader_low
        return Candidate(cfg=cfg, predicted_tokens_per_s=s.tokens_per_s, predicted_peak_bytes=s.peak_bytes,
                         calibrated_tokens_per_s=calibrated, steps=self.opts.trial_steps,
                         source=source + (" (close to the leader)" if close else ""), rerun_of=rerun_of)

    def _share(self, model: Model, r: int) -> None:
        """The ranking and the calibration, for other workers and optuna-dashboard (study user attrs)."""
        if r == 0 and "ranking" not in self.study.user_attrs:
            ranking = [[trial_label(cfg), round(s.tokens_per_s, 1)] for cfg, s in self.ranked[:200]]
            self.retry.call(lambda: self.study.set_user_attr("ranking", ranking), "sharing the ranking")
        if model.measured:
            value = {"factors": calibration_dict(model.cal), "from_trials": model.measured,
                     "ratio_by_strategy": {k: round(v, 4) for k, (v, _) in model.ratio_by_strategy.items()},
                     "log_spread": round(model.log_spread, 4), "round": r}
            self.retry.call(lambda: self.study.set_user_attr("calibration", json.loads(json.dumps(value))),
                            "sharing the calibration")

    def _report(self, trials: list[FrozenTrial]) -> None:
        if self.progress is None:
            return
        ok = [t for t in trials if t.state is TrialState.COMPLETE]
        best = max(ok, key=lambda t: t.values[0], default=None)
        label = f"{best.user_attrs.get('name', '')} {best.values[0]:,.0f} tok/s" if best else ""
        self.progress(sum(1 for t in trials if is_verdict(t)), self.budget, label)


def final_model(space: TuneSpace, trials: list[FrozenTrial], base: Calibration) -> Model:
    """The calibration fitted from every measured trial of the study (for the report)."""
    done = []
    for t in trials:
        if t.state is TrialState.COMPLETE and t.params:
            cfg, _ = space.config_for(t.params)
            if cfg is not None:
                done.append((cfg, t))
    return fit_model(done, base, with_memory=True)

