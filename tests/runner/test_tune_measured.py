"""Measured tuning on 2 CPU processes over gloo: real trials, a failure recorded and survived, a killed
study resumed without re-running finished trials, and two processes sharing one SQLite study."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from planner.build import build_config
from planner.search import SearchSpace
from planner.strategy import Attn, Engine, GradCkpt, Method, Optimizer, ZeroStage
from planner.tune_space import Filters, build_space
from runner.trial import INJECT_ENV, unsupported
from runner.tune import TuneOptions, exhaustive_study, spread, tune
from runner.tuning.analytical import feasible

pytestmark = pytest.mark.slow

TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 1024, "hidden_size": 128,
        "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-llama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY))
    return path


def _space(tiny: Path, engines: tuple[Engine, ...], zeros: tuple[ZeroStage, ...] | None):
    base = build_config(model=str(tiny), gpus="2xCPU", method=Method.full, seq_len=128, check=False)
    space_def = SearchSpace(methods=(Method.full,), micro_batches=(2, 8), grad_ckpts=(GradCkpt.none, GradCkpt.full),
                            attns=(Attn.sdpa,), optimizers=(Optimizer.adamw,))
    return build_space(base, space_def, Filters(engines=engines, zero_stages=zeros), unsupported)


def test_measured_tune_records_a_failure_and_goes_on(tiny, tmp_path, monkeypatch):
    # ZeRO stage x micro-batch x checkpointing; DDP stands for "no ZeRO" (the cheapest trial to start)
    space = _space(tiny, (Engine.ddp, Engine.deepspeed), (ZeroStage.OPTIMIZER_STATES, ZeroStage.WEIGHTS))
    assert {d.name: len(d.choices) for d in space.dimensions}["strategy"] == 3
    # two trials, the first crashing on purpose: the study records it and goes on to measure the second (a third
    # trial, measured before as well, only repeated what the second shows at the cost of one more torch start)
    opts = TuneOptions(measure=True, trials=2, top=2, storage=f"sqlite:///{tmp_path / 'm.db'}", trial_steps=1,
                       trial_timeout_s=240)
    feasible = sorted((t for t in exhaustive_study(space, opts).trials if t.user_attrs["overshoot_bytes"] <= 0),
                      key=lambda t: (-t.values[0], t.values[1]))
    first = spread([(space.config_for(t.params)[0], None) for t in feasible], 2)
    doomed = str(first[0])  # the first plan measured crashes on purpose
    monkeypatch.setenv(INJECT_ENV, f"^{re.escape(doomed)}$=crash")
    result = tune(space, opts)
    states = {r.name: r for r in result.rows if r.state in ("complete", "failed")}
    assert states[doomed].state == "failed" and "injected failure" in states[doomed].reason
    assert states[str(first[1])].state == "complete"  # measured after the failure
    assert result.trials_failed == 1 and result.trials_completed == 1
    ok = [r for r in result.rows if r.state == "complete"]
    assert all(r.tokens_per_s > 0 and r.peak_bytes > 0 and r.predicted_peak_bytes > 0 for r in ok)
    assert str(result.best.config) != doomed and result.best_row.state == "complete"


def _tune_cmd(tiny: Path, db: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ftplan", "tune", "--model", str(tiny), "--gpus", "2xCPU", "--method", "full",
            "--seq-len", "128", "--engine", "ddp", "--micro-batch", "2", "--micro-batch", "8", "--grad-ckpt", "none",
            "--grad-ckpt", "full", "--attn", "sdpa", "--optimizer", "adamw", "--storage", db, "--study", "s",
            "--json", *extra]


def _trials(db: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=db).get_trials(deepcopy=False)


def test_killed_study_resumes_without_rerunning(tiny, tmp_path):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    # heartbeat 1 s: the killed trial counts as lost after 6 s of silence (12 s at 2). One worker runs at a time
    # and a worker reaps only between its own trials, so a slow beat cannot get a live trial reaped here
    cmd = _tune_cmd(tiny, db, "--measure", "--trials", "2", "--top", "2", "--trial-steps", "1", "--heartbeat", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 900
    done: list[optuna.trial.FrozenTrial] = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            done = [t for t in _trials(db, "s:measured") if t.state.name == "COMPLETE"]
        except (KeyError, Exception):
            continue
        if done:
            break
    assert done, "no trial completed before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.params, t.values) for t in done}

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    after = _trials(db, "s:measured")
    for number, (params, values) in before.items():  # kept as they were
        assert after[number].params == params and after[number].values == values
    complete = [t for t in after if t.state.name == "COMPLETE"]
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(keys) == len(set(keys)), "a finished parameter set ran twice"
    # the plan killed mid-trial is failed "worker lost" once its heartbeat goes stale, then measured again
    verdicts = [t for t in after if t.state.name == "COMPLETE" or "failure" in t.user_attrs]
    assert data["trials_completed"] == len(complete) >= 1
    assert len(verdicts) == 2, [(t.number, t.state.name, t.user_attrs) for t in after]
    assert all(t.state.name != "RUNNING" for t in after)
    for t in after:
        if t.state.name == "FAIL" and "failure" not in t.user_attrs:
            assert t.user_attrs["reason"] == "worker lost"
            assert any(c.params == t.params for c in complete)


def test_two_processes_share_one_sqlite_study(tmp_path):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "ftplan", "tune", "--model", "7b", "--gpus", "8xA800", "--method", "lora",
           "--trials", "30", "--sampler", "tpe", "--storage", db, "--study", "shared", "--json"]
    procs = [subprocess.Popen([*cmd, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    trials = _trials(db, "shared")
    # each stops once the study holds 30 evaluated plans; proposals of a plan already evaluated (pruned duplicates)
    # or of no plan (pruned with the reason) cost no budget (runner/tuning/analytical.py)
    evaluated = [t for t in trials if t.state is TrialState.COMPLETE]
    assert 30 <= len(evaluated) <= 32
    assert any(feasible(t) for t in evaluated)
    assert all(t.state.is_finished() for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    with sqlite3.connect(tmp_path / "shared.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    best = [json.loads(o[0])["best"]["name"] for o in outs]
    assert best[0] and best[1]
