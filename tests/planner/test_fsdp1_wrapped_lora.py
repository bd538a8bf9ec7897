"""FSDP1 cannot train LoRA on the targets peft adapts as parameters (a MoE model's fused experts and its router:
peft's ParamWrapper reads lora_A / lora_B without calling them, so FSDP1 never unshards them; seen on 2 CPU processes,
tests/runner/test_moe_lora_sharded.py). The planner refuses those plans with one reason (planner/engines/fsdp.py
fsdp1_wrapped_lora_problem) and keeps every other: FSDP2, ZeRO-3, FSDP1 LoRA on nn.Linear targets only, FSDP1 full
fine-tuning, FSDP1 on a dense model."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run

from planner.build import build_config
from planner.engines.fsdp import fsdp1_wrapped_lora_problem
from planner.errors import PlanError
from planner.strategy import Engine, FsdpStrategy, Method

MOE = "qwen3-30b-a3b"
FSDP1 = {"fsdp": FsdpStrategy.full_shard, "fsdp_version": 1}


def _cfg(model: str = MOE, **kw: object):
    return build_config(model=model, gpus="8xH100", check=False, **{"method": Method.lora, **kw})


@pytest.mark.parametrize("targets", [None, "q_proj,gate_proj,up_proj,down_proj"], ids=["default", "v4-names"])
def test_fsdp1_lora_on_fused_experts_is_refused(targets: str | None) -> None:
    kw = {"lora_targets": targets} if targets else {}
    problem = fsdp1_wrapped_lora_problem(_cfg(**FSDP1, **kw))
    assert problem is not None and problem.startswith("FSDP1 cannot train LoRA on experts.gate_up_proj, "
                                                      "experts.down_proj")
    assert "--fsdp-version 2" in problem and "\n" not in problem
    with pytest.raises(PlanError, match="FSDP1 cannot train LoRA"):
        build_config(model=MOE, gpus="8xH100", method=Method.lora, **FSDP1, **kw)


@pytest.mark.parametrize("kw", [
    {"fsdp": FsdpStrategy.full_shard},  # FSDP2
    {"zero": 3},
    {**FSDP1, "lora_targets": "q_proj,v_proj"},  # nn.Linear targets only
    {**FSDP1, "method": Method.full},
], ids=["fsdp2", "zero3", "fsdp1-attention-targets", "fsdp1-full"])
def test_other_moe_plans_stand(kw: dict) -> None:
    assert fsdp1_wrapped_lora_problem(_cfg(**kw)) is None


def test_fsdp1_lora_on_a_dense_model_stands() -> None:
    assert fsdp1_wrapped_lora_problem(_cfg("7b", **FSDP1)) is None


def test_estimate_refuses_in_one_line(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", MOE, "--gpus", "8xH100", "--method", "lora",
                         "--fsdp", "full_shard", "--fsdp-version", "1")
    assert code == 2 and not out
    assert err.count("\n") == 1 and "FSDP1 cannot train LoRA on experts.gate_up_proj" in err, err


def test_plan_with_fsdp_version_1_offers_no_fsdp1_lora(capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "plan", "--model", MOE, "--gpus", "8xH100", "--method", "lora",
                         "--fsdp-version", "1", "--json")
    assert code == 0, err
    plans = json.loads(out)["plans"]
    assert plans and not [p["name"] for p in plans if p["config"]["engine"] == Engine.fsdp.value]
