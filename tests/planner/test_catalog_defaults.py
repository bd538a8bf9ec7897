"""Every catalog model plans with the options left at their defaults: `estimate --gpus 8xH100 --zero 3 --method M`
for lora, qlora and full raises no PlanError (analytic, timed as the CLI's estimate is). The defaults a user did not
give are ftplan's to choose, as transformers and peft would run them:

- the attention transformers picks for the class when none is named (planner.validity.default_attn: sdpa, or eager
  for gpt-oss, which has no SDPA path); an --attn the user gives is kept, and refused where the class lacks it;
- peft's all-linear LoRA, less a linear peft's LoRA fails on (planner.params.default_lora_targets: Llama 4's router,
  which returns a tuple), named one by one; targets the user names are kept, and refused where one fails.

Before, llama-4-scout-17b-16e (router), deepseek-v3 (a false error on its fused experts) and gpt-oss (no sdpa) were
refused with options the user never gave.
"""

from __future__ import annotations

import pytest

from planner.build import build_config
from planner.errors import PlanError
from planner.estimate import estimate
from planner.models import from_name, model_names
from planner.notes import plan_notes
from planner.params import ALL_TARGETS, default_lora_targets, lora_target_problem
from planner.strategy import Attn, Method
from planner.validity import default_attn

CASES = [(name, method) for name in model_names() for method in Method]


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m.value}" for n, m in CASES])
def test_every_catalog_model_estimates_with_default_options(name: str, method: Method) -> None:
    cfg = build_config(model=name, gpus="8xH100", zero=3, method=method)
    est = estimate(cfg)  # timed, as `ftplan estimate` runs it
    assert est.time is not None
    assert cfg.attn is default_attn(cfg.model)
    if method is not Method.full:
        assert lora_target_problem(cfg.model, cfg.lora_targets) is None


def test_only_models_without_sdpa_default_to_eager() -> None:
    eager = {name for name in model_names() if default_attn(from_name(name)) is Attn.eager}
    assert eager == {"gpt-oss-20b", "gpt-oss-120b"}
    cfg = build_config(model="gpt-oss-20b", gpus="8xH100", zero=3)
    assert any(note.startswith("attention eager: GptOssForCausalLM has no sdpa path") for note in plan_notes(cfg))
    assert not any(note.startswith("attention") for note in plan_notes(build_config(model="qwen3-8b", gpus="8xH100")))


def test_an_attention_the_user_gives_is_kept_and_refused_where_the_class_lacks_it() -> None:
    assert build_config(model="gpt-oss-20b", gpus="8xH100", attn=Attn.flash).attn is Attn.flash
    assert build_config(model="qwen3-8b", gpus="8xH100", attn=Attn.eager).attn is Attn.eager
    with pytest.raises(PlanError, match="gpt-oss-20b has no sdpa attention"):
        build_config(model="gpt-oss-20b", gpus="8xH100", attn=Attn.sdpa)


def test_only_llama4_names_its_default_targets() -> None:
    named = {name: default_lora_targets(from_name(name)) for name in model_names()}
    assert {name for name, targets in named.items() if targets != (ALL_TARGETS,)} == {"llama-4-scout-17b-16e"}
    assert named["llama-4-scout-17b-16e"] == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj")
    cfg = build_config(model="llama-4-scout-17b-16e", gpus="8xH100", zero=3)
    assert cfg.lora_targets == named["llama-4-scout-17b-16e"]
    assert [n for n in plan_notes(cfg) if n.startswith("LoRA targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
                                                       "down_proj: peft's all-linear without router")]


@pytest.mark.parametrize("targets", ["all", "q_proj,router"])
def test_targets_the_user_names_are_kept_and_refused_where_peft_fails(targets: str) -> None:
    with pytest.raises(PlanError, match="peft's LoRA fails on router of llama-4-scout-17b-16e"):
        build_config(model="llama-4-scout-17b-16e", gpus="8xH100", zero=3, lora_targets=targets)


def test_llama4_default_targets_plan_the_shared_expert_branches() -> None:
    """The shared expert's gate_proj and up_proj were measured without the router (profiler/spec_derive.py): LoRA
    on them saves more than LoRA on the attention and down_proj alone."""
    without = "q_proj,k_proj,v_proj,o_proj,down_proj"
    fewer = estimate(build_config(model="llama-4-scout-17b-16e", gpus="8xH100", zero=3, lora_targets=without))
    default = estimate(build_config(model="llama-4-scout-17b-16e", gpus="8xH100", zero=3))
    assert default.memory.activations > fewer.memory.activations


def test_the_planner_api_searches_the_models_own_attention_when_none_is_given() -> None:
    # `plan(base)` with the bare SearchSpace() (the Python API, as `ftplan run` calls it) searches the attention
    # transformers picks, as `search_space` does for the CLI: eager for gpt-oss, where SDPA would only be refused
    from planner.search import SearchSpace, candidates, plan
    base = build_config(model="gpt-oss-20b", gpus="8xH100", method=Method.lora)
    assert {c.attn for c in candidates(base, SearchSpace(methods=(Method.lora,)))} == {Attn.eager}
    assert plan(base, SearchSpace(methods=(Method.lora,))).plans
    llama = build_config(model="7b", gpus="8xH100", method=Method.lora)
    assert {c.attn for c in candidates(llama, SearchSpace(methods=(Method.lora,)))} == {Attn.sdpa}
