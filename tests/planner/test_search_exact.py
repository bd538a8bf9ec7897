"""The search's shortcuts (one validity check per strategy, memoized per-model and per-strategy quantities, the
memory lower bound that skips a candidate's full estimate) change no number and no verdict: `plan` agrees with
estimating every candidate one by one, in the reverse order, from empty caches (a memo keyed on too few fields
would hand a candidate another one's numbers). And a model read from transformers is searched as widely as a
hand-written one (issue 23: `plan --model qwen3-8b --gpus 8xH100` evaluates as many candidates as the Llama plan)."""

from __future__ import annotations

import pytest
from planner_caches import clear_lru_caches

from planner import memory, timing
from planner.build import build_config
from planner.estimate import FitKind, estimate, fit_reason
from planner.search import SearchSpace, candidates, plan, search_space
from planner.strategy import Attn, GradCkpt, Method, Stage
from planner.validity import problems

# the memos keyed on part of a config (planner.memory, planner.timing)
MEMOS = (memory._STRATEGY_PARTS, memory._ACTIVATIONS, timing._MICRO_BATCH_S)


def _clear_caches() -> None:
    clear_lru_caches()


def _one_by_one(base, space):
    """What `plan` must find, without its shortcuts: every candidate checked and estimated on its own."""
    valid, rejected, fitting = 0, {}, {}
    for cfg in reversed(list(candidates(base, space))):
        found = problems(cfg)
        if found:
            rejected[found[0]] = rejected.get(found[0], 0) + 1
            continue
        valid += 1
        est = estimate(cfg, timed=None)
        if est.fits:
            fitting[str(cfg) + cfg.method.value] = est
        else:
            first = est.fit_failures[0]
            key = "does not fit in GPU memory" if first.kind is FitKind.gpu_memory else fit_reason(cfg, first)
            rejected[key] = rejected.get(key, 0) + 1
    return valid, rejected, fitting


@pytest.mark.parametrize(("model", "gpus", "narrow"), [
    ("7b", "8xA800", {"methods": (Method.full, Method.lora)}),
    ("qwen3-30b-a3b", "8xH100", {"methods": (Method.full,), "grad_ckpts": (GradCkpt.none, GradCkpt.full)}),
    ("gemma-3-4b", "2x4xA100", {"methods": (Method.lora, Method.qlora), "micro_batches": (1, 4, 16)}),
], ids=["llama-7b", "qwen3-moe", "gemma3-2nodes"])
def test_plan_agrees_with_estimating_every_candidate(model: str, gpus: str, narrow: dict) -> None:
    base = build_config(model=model, gpus=gpus, check=False)
    space = search_space(base, **narrow)
    _clear_caches()
    result = plan(base, space)
    _clear_caches()
    valid, rejected, fitting = _one_by_one(base, space)
    assert result.candidates_evaluated == sum(1 for _ in candidates(base, space))
    assert result.valid == valid
    assert result.rejected == rejected
    assert {str(e.config) + e.config.method.value for e in result.plans} == set(fitting)
    for est in result.plans:
        other = fitting[str(est.config) + est.config.method.value]
        assert est.config == other.config
        assert est.memory == other.memory
        assert est.time == other.time
        assert (est.params_total, est.params_trainable, est.fit_failures) == \
            (other.params_total, other.params_trainable, other.fit_failures)


@pytest.mark.parametrize(("model", "gpus", "stage", "narrow"), [
    ("7b", "8xA800", Stage.sft, {"attns": (Attn.sdpa, Attn.eager)}),
    ("qwen3-30b-a3b", "2x8xH100", Stage.sft, {"micro_batches": (1, 2, 8)}),
    ("gemma-3-4b", "4xL40S", Stage.dpo, {}),
    ("qwen3-0.6b", "2xCPU", Stage.sft, {}),
], ids=["llama-7b-eager", "qwen3-moe-2nodes", "gemma3-dpo", "cpu"])
def test_memos_keyed_on_part_of_a_config_read_nothing_else(model: str, gpus: str, stage: Stage, narrow: dict) -> None:
    """Every memo keyed on part of a config (a strategy's memory parts, activations shared across engines, a
    micro-batch's device time) returns, for every valid candidate of a search, what a fresh computation of that
    candidate returns: a field they read but leave out of their key would show here."""
    base = build_config(model=model, gpus=gpus, stage=stage, check=False)
    space = search_space(base, **narrow)
    configs = [cfg for cfg in candidates(base, space) if not problems(cfg)]
    assert configs
    warm = [(memory.memory_per_gpu(cfg), timing.step_time(cfg)) for cfg in configs]
    for cfg, (mem, step) in zip(configs, warm, strict=True):
        for memo in MEMOS:
            memo.clear()
        assert memory.memory_per_gpu(cfg) == mem, str(cfg)
        assert timing.step_time(cfg) == step, str(cfg)


def test_qwen3_8b_plan_evaluates_as_many_candidates_as_the_7b_plan() -> None:
    """Issue 23: the Qwen3 plan searches the same space as the Llama plan (the per-candidate cost of a model read
    from transformers is benchmarks/plan_speed.py's to measure, not a test's)."""
    qwen = plan(build_config(model="qwen3-8b", gpus="8xH100", check=False))
    llama = plan(build_config(model="7b", gpus="8xH100", check=False))
    llama_a800 = plan(build_config(model="7b", gpus="8xA800", check=False))
    assert qwen.candidates_evaluated == llama.candidates_evaluated == llama_a800.candidates_evaluated > 8_000
    assert qwen.plans and llama.plans
    assert qwen.valid == llama.valid


def test_the_default_space_is_searched_in_full() -> None:
    base = build_config(model="7b", gpus="8xA800", check=False)
    assert sum(1 for _ in candidates(base, SearchSpace())) == plan(base).candidates_evaluated


def test_the_rl_search_shortcuts_build_the_same_configs() -> None:
    """planner.rl.search builds vLLM's memory-share probes from the config's parts, and planner.rl.parts hands out
    one training part per strategy: both equal what dataclasses.replace makes."""
    from dataclasses import replace

    from planner.rl.parts import training_part
    from planner.rl.search import with_memory_share
    from planner.rl.settings import Generation, Rollout

    base = build_config(model="7b", gpus="8xA800", stage=Stage.grpo, method="full", micro_batch=2, check=False)
    cfg = replace(base, rollout=replace(base.rollout, generation=Generation.vllm_colocate, vllm_tp=2, kl_beta=0.04))
    assert with_memory_share(cfg, 0.45) == replace(cfg, rollout=replace(cfg.rollout, vllm_memory=0.45))
    part = training_part(cfg)
    assert part == replace(cfg, rollout=Rollout(completion_len=cfg.rollout.completion_len))
    assert training_part(replace(cfg, rollout=replace(cfg.rollout, vllm_sleep=True))) is part
