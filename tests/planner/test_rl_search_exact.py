"""The online RL search's shortcuts change no number and no verdict (as tests/planner/test_search_exact.py checks
for SFT): the strategies built once per training cluster, validity decided once per key, vLLM's memory share found
per rank batch, and the memos keyed on the identity of a config's parts (planner.rl.parts.memo_by_parts: the RL
parts beside a training step, the rollout terms of a step's time, the resident training states, vLLM's needed
share). For the grpo, rloo and ppo stages, `plan` agrees with checking and estimating every candidate one by one,
in the reverse order, from empty caches; and every candidate's memo-served estimate equals a fresh computation of
that candidate with the memos emptied (a memo keyed on too few fields would hand it another candidate's numbers)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from planner_caches import clear_lru_caches

from planner import memory, timing
from planner.build import build_config
from planner.estimate import FitKind, estimate, fit_reason
from planner.rl import memory as rl_memory
from planner.rl import parts as rl_parts
from planner.rl import search as rl_search
from planner.rl import timing as rl_timing
from planner.rl.settings import Generation, RolloutSpace
from planner.search import candidates, default_global_batch, plan, search_space
from planner.strategy import GradCkpt, Method, Stage
from planner.validity import problems

# the memos keyed on part of a config, or on the identity of its parts
MEMOS = (memory._STRATEGY_PARTS, memory._ACTIVATIONS, timing._MICRO_BATCH_S, rl_memory._RL_PARTS,
         rl_memory._RESIDENT, rl_memory._TRAINING_OF, rl_timing._ROLLOUT_TERMS, rl_search._NEEDED,
         rl_memory._KEPT, rl_search._WITH_MEMORY, rl_parts._PART_BY_IDENTITY, rl_parts._BY_IDENTITY,
         rl_parts._TRAINING_PARTS)

CASES = [
    ("7b", "8xA800", Stage.grpo, {}, {"methods": (Method.full, Method.lora), "micro_batches": (1, 4, 8)}),
    ("qwen3-8b", "2x8xH100", Stage.grpo, {"completion_len_mean": 200, "kl_beta": 0.04, "reward_model": "qwen3-0.6b"},
     {"methods": (Method.lora, Method.qlora), "micro_batches": (2, 8), "grad_ckpts": (GradCkpt.full,)}),
    ("gemma-3-4b", "4xL40S", Stage.rloo, {"completion_len_mean": 300},
     {"methods": (Method.full, Method.qlora), "micro_batches": (1, 8)}),
    ("qwen3-8b", "8xH100", Stage.ppo, {"reward_model": "qwen3-0.6b"}, {"methods": (Method.full, Method.lora)}),
    ("qwen3-30b-a3b", "8xH100", Stage.grpo, {"kl_beta": 0.04},
     {"methods": (Method.full, Method.lora), "micro_batches": (1, 8), "grad_ckpts": (GradCkpt.full,)}),
]
IDS = ["grpo-7b", "grpo-2nodes-eos-kl-reward", "rloo-eos", "ppo-reward", "grpo-moe-expert-parallel"]


def _clear_caches() -> None:
    clear_lru_caches()
    _clear_memos()


def _clear_memos() -> None:
    for memo in MEMOS:
        memo.clear()
    rl_parts._LAST[:] = [None, None]


def _space(model: str, gpus: str, stage: Stage, rollout: dict, narrow: dict):
    base = build_config(model=model, gpus=gpus, stage=stage, check=False, **rollout)
    return base, search_space(base, **narrow)


def _every_candidate(base, space):
    """(config, whether vLLM's share is chosen) of every candidate, in rl_plan's order, built the plain way."""
    rspace = space.rollouts or RolloutSpace()
    global_batch = space.global_batch or default_global_batch(base)
    strategy_space = replace(space, global_batch=global_batch, tps=(1,), pps=(1,))
    out = []
    for cluster, rollout in rl_search.variants(base, rspace):
        b = replace(base, cluster=cluster, rollout=rollout)
        if global_batch % b.world_size:
            continue
        auto = rollout.generation is Generation.vllm_colocate and rspace.vllm_memory is None
        out += [(cfg, auto) for cfg in candidates(b, strategy_space)]
    return out


def _checked(cfg, auto: bool):
    """The config validity sees: where the search chooses vLLM's share, at the largest share it may choose."""
    return replace(cfg, rollout=replace(cfg.rollout, vllm_memory=rl_search.MAX_MEMORY)) if auto else cfg


def _one_by_one(base, space):
    """What `plan` must find, without its shortcuts: every candidate checked and estimated on its own, the last
    first (vLLM's share chosen as planner.rl.search.choose_memory_share chooses it)."""
    valid, rejected, fitting = 0, {}, {}
    for cfg, auto in reversed(_every_candidate(base, space)):
        found = problems(_checked(cfg, auto))
        if found:
            rejected[found[0]] = rejected.get(found[0], 0) + 1
            continue
        valid += 1
        est = rl_search.choose_memory_share(cfg, _limits(), _cal()) if auto else estimate(cfg, timed=None)
        if est.fits:
            fitting[repr(est.config)] = est
        else:
            first = est.fit_failures[0]
            key = "does not fit in GPU memory" if first.kind is FitKind.gpu_memory else fit_reason(cfg, first)
            rejected[key] = rejected.get(key, 0) + 1
    return valid, rejected, fitting


def _limits():
    from planner.estimate import Limits

    return Limits()


def _cal():
    from planner.calibration import DEFAULT

    return DEFAULT


@pytest.mark.parametrize(("model", "gpus", "stage", "rollout", "narrow"), CASES, ids=IDS)
def test_rl_plan_agrees_with_estimating_every_candidate(model: str, gpus: str, stage: Stage, rollout: dict,
                                                         narrow: dict) -> None:
    base, space = _space(model, gpus, stage, rollout, narrow)
    _clear_caches()
    result = plan(base, space)
    _clear_caches()
    valid, rejected, fitting = _one_by_one(base, space)
    assert result.candidates_evaluated == len(_every_candidate(base, space))
    assert result.valid == valid
    assert result.rejected == rejected
    assert result.plans
    assert {repr(e.config) for e in result.plans} == set(fitting)
    for est in result.plans:
        assert est == fitting[repr(est.config)], str(est.config)


@pytest.mark.parametrize(("model", "gpus", "stage", "rollout", "narrow"), CASES, ids=IDS)
def test_rl_memos_keyed_on_parts_of_a_config_read_nothing_else(model: str, gpus: str, stage: Stage, rollout: dict,
                                                                narrow: dict) -> None:
    """Every valid candidate (and each colocated one at the vLLM share the search chose for it): its estimate from
    warm memos, filled by the whole search in order, equals its estimate with every partial-key memo emptied."""
    base, space = _space(model, gpus, stage, rollout, narrow)
    _clear_caches()
    result = plan(base, space)
    configs = [cfg for cfg, _ in _every_candidate(base, space) if not problems(cfg)]
    configs += [e.config for e in result.plans]
    warm = [estimate(cfg) for cfg in configs]
    for cfg, est in zip(configs, warm, strict=True):
        _clear_memos()
        assert estimate(cfg) == est, str(cfg)
        assert rl_search.needed_memory_share(cfg) == rl_search._needed_memory_share(cfg), str(cfg)


def test_the_default_grpo_plan_decides_validity_as_every_candidate_alone() -> None:
    """rl_plan decides validity once per strategy and generation setting, whatever the micro-batch split and
    checkpointing: every candidate of the default 7B GRPO search gets the verdict `problems` gives it alone."""
    base = build_config(model="7b", gpus="8xA800", stage=Stage.grpo, check=False)
    space = search_space(base)
    every = _every_candidate(base, space)
    counts: dict[str, int] = {}
    for cfg, auto in every:
        found = problems(_checked(cfg, auto))
        if found:
            counts[found[0]] = counts.get(found[0], 0) + 1
    result = plan(base, space)
    assert {k: result.rejected.get(k) for k in counts} == counts
    assert result.valid == len(every) - sum(counts.values())


def test_colocated_plans_are_valid_when_a_share_the_search_may_choose_holds_the_engine() -> None:
    """Llama-2-70B LoRA GRPO on 8 H100: at TP 2 vLLM's weights take 64 GiB, more than the rollout's default share
    (0.3 of the GPU) but within the largest the search chooses (0.95): colocated candidates are not rejected for
    the default share, the fit decides (vLLM's sleep mode frees its memory during training)."""
    base = build_config(model="70b", gpus="8xH100", stage=Stage.grpo, method="lora", check=False)
    result = plan(base, search_space(base))
    assert not any("of the GPU) holds" in reason for reason in result.rejected)
    assert any(e.config.rollout.generation is Generation.vllm_colocate for e in result.plans)
