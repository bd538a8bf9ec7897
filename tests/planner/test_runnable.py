"""The runnable flag: which plans `ftplan run` executes (planner/runnable.py), in plan/tune output and the winner."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run

from planner.build import build_config
from planner.runnable import RULES, runnable, runnable_first, unrunnable_reasons
from planner.strategy import Attn, FsdpStrategy, Method, Optimizer, Stage


@pytest.mark.parametrize(("kw", "expected"), [
    ({"zero": 1, "tp": 2, "method": Method.full}, True),  # DeepSpeed AutoTP through the Trainer
    ({"zero": 2, "tp": 2, "method": Method.full}, True),
    ({"zero": 1, "pp": 2, "method": Method.full}, True),  # DeepSpeed's pipeline engine
    ({"zero": 0, "pp": 4, "method": Method.full}, True),
    ({"zero": 1, "tp": 2, "method": Method.lora}, False),
    ({"zero": 1, "pp": 2, "method": Method.lora}, False),
    ({"zero": 1, "tp": 2, "pp": 2, "method": Method.full}, False),
    ({"zero": 1, "pp": 2, "method": Method.full, "optimizer": Optimizer.adamw_8bit}, False),
    ({"zero": 3}, True),
    ({"stage": Stage.ppo, "fsdp": FsdpStrategy.full_shard}, False),  # handed to verl
    ({"stage": Stage.grpo, "zero": 2}, True),
    ({"doc_len": 256, "attn": Attn.flash}, False),  # packed documents: run from the emitted LLaMA-Factory config
], ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={getattr(x, 'value', x)}"
                                                                   for k, x in v.items()))
def test_rules(kw: dict, expected: bool) -> None:
    cfg = build_config(model="7b", gpus="8xA800", **kw)
    assert runnable(cfg) is expected
    assert (unrunnable_reasons(cfg) == []) is expected


def test_cpu_plans_and_model_rules() -> None:
    # bitsandbytes' 8-bit optimizers and NF4 layers run on its CPU backend (runner/quant.py): a CPU plan runs them
    assert runnable(build_config(model="7b", gpus="2xCPU", optimizer=Optimizer.adamw_8bit, seq_len=256))
    # rm / dpo go through TRL's trainers: data parallelism only
    dpo_tp = build_config(model="7b", gpus="8xA800", method=Method.full, zero=1, tp=2, stage=Stage.dpo)
    assert any("TRL" in r for r in unrunnable_reasons(dpo_tp))
    assert runnable(build_config(model="7b", gpus="8xA800", zero=1, stage=Stage.dpo))
    # Llama-3.2-1B ties its embedding to the head: the pipeline runner does not
    tied = build_config(model="llama-3.2-1b", gpus="8xA800", method=Method.full, zero=1, pp=2)
    assert any("tied" in r for r in unrunnable_reasons(tied))
    glm = build_config(model="chatglm3-6b", gpus="8xA800", method=Method.full, zero=1, pp=2)
    assert any("GLMBlock" in r for r in unrunnable_reasons(glm))


def test_rules_are_a_table() -> None:
    for reason, applies in RULES:
        assert isinstance(reason, str) and reason and callable(applies)


def test_runnable_first_is_stable() -> None:
    a = build_config(model="7b", gpus="8xA800", zero=1, tp=2)  # LoRA + TP: not run
    b = build_config(model="7b", gpus="8xA800", zero=1)
    c = build_config(model="7b", gpus="8xA800", zero=2)
    assert runnable_first([a, b, c], key=lambda x: x) == [b, c, a]


def test_plan_json_and_table_mark_runnable(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, monkeypatch, "plan", "--model", "70b", "--gpus", "2x8xA800", "--method", "lora",
                       "--json", "--top", "3")
    assert code == 0
    plans = json.loads(out)["plans"]
    assert all(p["runnable"] and p["unrunnable_reasons"] == [] for p in plans)
    code, out, _ = run(capsys, monkeypatch, "plan", "--model", "70b", "--gpus", "2x8xA800", "--method", "lora",
                       "--json", "--top", "3", "--include-unrunnable")
    ranked = json.loads(out)["plans"]
    # the time model ranks a LoRA TP x PP plan first; ftplan run does not execute it
    assert not ranked[0]["runnable"] and ranked[0]["unrunnable_reasons"]
    assert ranked[0]["tokens_per_s"] > plans[0]["tokens_per_s"]
    code, out, _ = run(capsys, monkeypatch, "plan", "--model", "70b", "--gpus", "2x8xA800", "--method", "lora",
                       "--include-unrunnable")
    # the winner's line wraps at 80 columns: compare with the line breaks folded
    assert "✗" in out and "(not run by `ftplan run`)" in " ".join(out.split())


def test_tune_winner_is_runnable(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("tune", "--model", "70b", "--gpus", "2x8xA800", "--method", "lora", "--storage", "memory", "--json")
    code, out, _ = run(capsys, monkeypatch, *args)
    assert code == 0 and json.loads(out)["best"]["runnable"]
    code, out, _ = run(capsys, monkeypatch, *args, "--include-unrunnable")
    assert code == 0 and not json.loads(out)["best"]["runnable"]
