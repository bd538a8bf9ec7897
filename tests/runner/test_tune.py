"""The analytical autotuner: its space matches the planner's, it finds plan()'s winner, bad input exits 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from optuna.trial import TrialState

from planner.build import build_config
from planner.search import TIE_FRACTION, SearchSpace, plan
from planner.strategy import Method
from planner.tune_space import Filters, build_space, choices_of, pareto_front
from runner.tune import TuneOptions, tune
from runner.tuning.analytical import CONSTRAINT
from runner.tuning.results import ENUMERATE_UP_TO


@pytest.fixture(scope="module")
def base_7b():
    return build_config(model="7b", gpus="8xA800", check=False)


def test_space_holds_exactly_the_planners_valid_candidates(base_7b):
    space_def = SearchSpace(methods=(Method.lora,))
    space = build_space(base_7b, space_def)
    result = plan(base_7b, space_def)
    assert sum(1 for _ in space.feasible()) == result.valid
    for est in result.plans[:50]:  # every fitting plan is addressable by its choices and maps back to itself
        cfg, reason = space.config_for(choices_of(est.config))
        assert reason == "" and cfg == est.config


def test_invalid_choices_say_why(base_7b):
    space = build_space(base_7b, SearchSpace(methods=(Method.lora,)))
    good = choices_of(next(space.feasible()))
    cfg, reason = space.config_for({**good, "strategy": "DDP", "tp": 2})
    assert cfg is None and "DeepSpeed" in reason
    cfg, reason = space.config_for({**good, "strategy": "Z1", "tp": 1, "pp": 1, "micro_batch": 32})
    assert cfg is None and "does not divide the 8 sequences" in reason
    cfg, reason = space.config_for({**good, "virtual_stages": 2, "pp": 1})
    assert cfg is None and "PP > 1" in reason


def test_virtual_stages_extend_the_space(base_7b):
    space = build_space(base_7b, SearchSpace(methods=(Method.lora,)), Filters(virtual_stages=(1, 2)))
    inter = [c for c in space.feasible() if c.virtual_stages == 2]
    assert inter and all(c.pp > 1 and c.pp_schedule.value == "interleaved" for c in inter)


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10.0, 5.0), (9.0, 4.0), (9.0, 6.0), (8.0, 4.0), (12.0, 9.0)]
    assert pareto_front(pts) == [4, 0, 1]


def test_analytical_tune_agrees_with_exhaustive_plan(base_7b):
    # compared with plan() at test time: the time model is its own module and may change. Both rank with the
    # same tie rule (planner.search.resolve_ties: within 1% of the fastest left, the simpler plan first),
    # so the tune's winner is plan's first plan, not merely the fastest one
    result = tune(build_space(base_7b, SearchSpace()), TuneOptions(storage="memory"))
    plans = plan(base_7b, SearchSpace()).plans
    assert result.best.config == plans[0].config
    assert result.best.config in {e.config for e in plans
                                  if e.time.tokens_per_s >= plans[0].time.tokens_per_s * (1 - TIE_FRACTION)}
    assert result.trials_completed == len(plans)


def test_small_space_is_enumerated_even_with_trials(base_7b):
    # a space of at most ENUMERATE_UP_TO runnable plans (the default option) is enumerated: the exact winner, not
    # a TPE sample of 25
    space = build_space(base_7b, SearchSpace(methods=(Method.full,)))
    assert 25 < sum(1 for _ in space.feasible()) <= ENUMERATE_UP_TO
    result = tune(space, TuneOptions(storage="memory", trials=25))
    assert result.sampler == "exhaustive"
    assert result.best.config == plan(base_7b, SearchSpace(methods=(Method.full,))).plans[0].config


def test_sampled_tune_rejects_infeasible_without_a_score(base_7b, tmp_path):
    space = build_space(base_7b, SearchSpace(methods=(Method.full,)))
    result = tune(space, TuneOptions(storage=f"sqlite:///{tmp_path / 't.db'}", trials=25, seed=3,
                                     enumerate_up_to=0))
    assert result.sampler == "tpe"
    assert result.plans_evaluated == 25  # the budget counts plans; points that name none are recorded for free
    assert result.trials_completed + result.trials_infeasible + result.trials_failed >= 25
    infeasible = [r for r in result.rows if r.state == "infeasible"]
    assert infeasible and all(r.reason for r in infeasible)
    assert all(r.tokens_per_s is None for r in infeasible if "per GPU" not in r.reason)  # pruned: no value
    assert result.best.fits


def test_sampled_tune_never_evaluates_a_plan_twice(base_7b):
    space = build_space(base_7b, SearchSpace(methods=(Method.lora,)))
    result = tune(space, TuneOptions(storage="memory", trials=150, seed=0, enumerate_up_to=0))
    names = [r.name for r in result.rows if r.state in ("complete", "infeasible") and r.name]
    assert len(names) == len(set(names)), "a plan was evaluated twice"
    assert result.plans_evaluated == len([r for r in result.rows if r.state != "infeasible" or r.name])
    assert result.plans_evaluated == 150  # the budget counts distinct plans (duplicates cost nothing)


def test_sampled_tune_progress_counts_plans_not_proposals(base_7b):
    # most points of the LoRA space name no plan (TP x PP that does not divide the GPUs, ...): they are recorded
    # for free, so the progress reads plans evaluated out of --trials, never more
    space = build_space(base_7b, SearchSpace(methods=(Method.lora,)))
    seen: list[tuple[int, int | None]] = []
    result = tune(space, TuneOptions(storage="memory", trials=20, seed=1, enumerate_up_to=0),
                  progress=lambda done, total, best: seen.append((done, total)))
    assert result.plans_evaluated == 20 and result.trials_infeasible > 0
    assert seen[-1] == (20, 20) and all(done <= 20 for done, _ in seen)


def test_points_that_name_no_plan_rank_below_every_plan(base_7b, tmp_path):
    # TPE ranks infeasible trials by ascending total violation (optuna/samplers/_tpe/sampler.py,
    # _split_infeasible_trials): a point that names no plan must violate more than any plan that does not fit,
    # or TPE prefers invalid points (two processes sharing a study once converged on them and found no plan)
    import optuna

    space = build_space(base_7b, SearchSpace(methods=(Method.lora,)))
    url = f"sqlite:///{tmp_path / 't.db'}"
    tune(space, TuneOptions(storage=url, study="s", trials=20, seed=1, enumerate_up_to=0))
    trials = optuna.load_study(study_name="s", storage=url).trials
    no_plan = [t.constraints[CONSTRAINT] for t in trials
               if t.state is TrialState.PRUNED and "duplicate_of" not in t.user_attrs]
    plans = [t.constraints[CONSTRAINT] for t in trials if t.state is TrialState.COMPLETE]
    assert no_plan and any(c > 0 for c in plans)
    assert min(no_plan) > max(plans)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftplan", "tune", *args], capture_output=True, text=True,
                          timeout=120)


def test_unreachable_storage_exits_2(tmp_path):
    out = _cli("--model", "7b", "--gpus", "8xA800", "--storage", "sqlite:////nonexistent-dir/x/t.db")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "cannot open tune storage" in out.stderr
    out = _cli("--model", "7b", "--gpus", "8xA800", "--storage", "not-a-url")
    assert out.returncode == 2 and "not a database URL" in out.stderr


def test_study_of_another_model_exits_2(tmp_path):
    db = f"sqlite:///{tmp_path / 't.db'}"
    first = _cli("--model", "7b", "--gpus", "8xA800", "--method", "lora", "--storage", db, "--study", "s",
                 "--json")
    assert first.returncode == 0, first.stderr
    out = _cli("--model", "13b", "--gpus", "8xA800", "--storage", db, "--study", "s")
    assert out.returncode == 2
    assert "belongs to llama-2-7b on 8xA800" in out.stderr and "Traceback" not in out.stderr


def test_nothing_fits_exits_2():
    out = _cli("--model", "70b", "--gpus", "1xT4", "--method", "full", "--storage", "memory")
    assert out.returncode == 2
    assert "nothing in the search space fits" in out.stderr and out.stderr.count("\n") == 1


def test_json_best_has_the_keys_of_plan_json(tmp_path):
    import json

    out = _cli("--model", "7b", "--gpus", "8xA800", "--method", "qlora", "--storage", "memory", "--json",
               "--emit", str(tmp_path / "win"))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    plan_out = subprocess.run([sys.executable, "-m", "ftplan", "plan", "--model", "7b", "--gpus", "8xA800",
                               "--method", "qlora", "--json"], capture_output=True, text=True, check=True)
    plans = json.loads(plan_out.stdout)["plans"]
    first = plans[0]
    assert set(data["best"]) == set(first)
    # the tuner takes the fastest plan; plan() puts a simpler one within 1% first (planner.search.rank)
    leaders = [p for p in plans if p["tokens_per_s"] >= first["tokens_per_s"] * (1 - TIE_FRACTION)]
    assert data["best"]["tokens_per_s"] >= first["tokens_per_s"] * (1 - TIE_FRACTION)
    assert data["best"]["name"] in {p["name"] for p in leaders} or len(leaders) == len(plans)
    assert data["trials_completed"] > 0 and data["trials_failed"] == 0
    assert (tmp_path / "win" / "plan.json").exists()


def test_analytical_tune_imports_no_torch():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftplan", "tune", "--model", "7b", "--gpus",
                           "8xA800", "--method", "qlora", "--storage", "memory", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {ln.rsplit("|", 1)[1].strip() for ln in done.stderr.splitlines() if ln.startswith("import time:")}
    assert "optuna" in names
    heavy = sorted(n for n in names if n.split(".")[0] in ("torch", "transformers", "deepspeed", "peft"))
    assert not heavy, heavy[:5]
