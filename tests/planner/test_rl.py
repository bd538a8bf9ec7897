"""The online RL stages in the planner (planner/rl/): what each part of GRPO's memory follows (reference model,
vLLM's share and sleep mode, transformers' KV cache), the generation time's shape, the validity rules, and the
search over generation settings (colocated and server vLLM ranked beside transformers' generate, the user's
choices kept)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cli_helpers import run

from planner.build import build_config
from planner.errors import PlanError
from planner.memory import memory_per_gpu
from planner.rl import generation as gen
from planner.rl.memory import reference_bytes
from planner.rl.options import rollout_space
from planner.rl.search import needed_memory_share, training_cluster
from planner.rl.settings import Generation, RolloutSpace
from planner.search import SearchSpace, plan
from planner.strategy import GradCkpt, Method, Stage, ZeroStage
from planner.timing import step_time
from planner.validity import problems

GiB = 2**30


def grpo(**kw):
    base = {"model": "llama-3.1-8b", "gpus": "8xH100", "stage": Stage.grpo, "method": Method.lora, "zero": 2,
            "micro_batch": 4, "grad_accum": 2, "seq_len": 1024, "grad_ckpt": GradCkpt.full}
    return build_config(**{**base, **kw})


def test_reference_model_follows_beta_and_method() -> None:
    assert reference_bytes(grpo(method=Method.full)) == 0  # GRPO's default beta = 0 loads none
    full = grpo(method=Method.full, kl_beta=0.04)
    # DeepSpeed casts the reference to 16 bits, every rank whole under ZeRO-2: 8.03B x 2 bytes
    assert reference_bytes(full) == pytest.approx(8.03e9 * 2, rel=0.01)
    assert reference_bytes(replace(full, zero=ZeroStage.WEIGHTS)) == pytest.approx(reference_bytes(full) / 8)
    assert reference_bytes(grpo(method=Method.lora, kl_beta=0.04)) == 0  # peft: the adapter-disabled base
    rloo = grpo(stage=Stage.rloo)
    assert rloo.kl_beta == 0.05 and rloo.num_generations == 2  # RLOOConfig's defaults
    # the allocator's reserve follows the step's transient tensors (planner.allocator), not a resident model
    assert memory_per_gpu(full).total - memory_per_gpu(grpo(method=Method.full)).total == pytest.approx(
        reference_bytes(full), rel=0.02)


def test_vllm_share_sleep_mode_and_transformers_kv_cache() -> None:
    tf = memory_per_gpu(grpo())
    colo = memory_per_gpu(grpo(generation=Generation.vllm_colocate, vllm_memory=0.4))
    # colocated vLLM holds its share through training: 0.4 of the GPU beside the step
    assert colo.other_items["vLLM (gpu_memory_utilization)"] == pytest.approx(0.4 * 80 * GiB, rel=0.01)
    assert colo.total - tf.total == pytest.approx(0.4 * 80 * GiB, rel=0.02)  # no allocator reserve on a resident share
    asleep = memory_per_gpu(grpo(generation=Generation.vllm_colocate, vllm_memory=0.4, vllm_sleep=True))
    assert asleep.total < colo.total  # freed while training, taken again only to generate
    # transformers' generate over a large generation batch at long completions: its KV cache makes the peak
    big = grpo(micro_batch=16, grad_accum=16, seq_len=8192, completion_len=4096)
    mem = memory_per_gpu(big)
    assert mem.phase == "generation" and mem.other_items["KV cache"] == pytest.approx(
        gen.kv_bytes_per_token(big.model, 2) * 256 * 8192)


def test_generation_time_is_decoding_bound_and_scales_with_completion_length() -> None:
    short = step_time(grpo(generation=Generation.vllm_colocate, completion_len=256))
    long = step_time(grpo(generation=Generation.vllm_colocate, completion_len=512, seq_len=1280))
    # decoding reads the 16 GB of weights per token: 256 more tokens cost >= 256 x 16 GB / 3.35 TB/s
    assert long.breakdown_s["generation"] - short.breakdown_s["generation"] >= 256 * 16.06e9 / 3.35e12 * 0.99
    assert {"generation", "scoring", "weight_sync"} <= set(short.breakdown_s)
    est = json.loads(json.dumps(short.breakdown_s))
    assert est["weight_sync"] > 0


def test_validity_rules() -> None:
    with pytest.raises(PlanError, match="at least 2 generations"):
        grpo(num_generations=1)
    with pytest.raises(PlanError, match="leaves no prompt"):
        grpo(completion_len=1024)
    with pytest.raises(PlanError, match="data parallelism only"):
        grpo(method=Method.full, zero=1, tp=2)
    with pytest.raises(PlanError, match="vLLM generates on CUDA GPUs"):
        grpo(gpus="2xCPU", generation=Generation.vllm_colocate, zero=None)
    with pytest.raises(PlanError, match="not one 1024-token sequence"):
        grpo(generation=Generation.vllm_colocate, vllm_memory=0.15)
    with pytest.raises(PlanError, match="whole groups"):
        grpo(num_generations=16, micro_batch=1, grad_accum=1)
    with pytest.raises(PlanError, match="verl"):
        build_config(model="llama-3.1-8b", gpus="8xH100", stage=Stage.ppo, zero=2, seq_len=1024)
    assert not problems(grpo())


def test_training_cluster_for_a_server() -> None:
    from planner.gpus import parse_gpus

    assert str(training_cluster(parse_gpus("8xH100"), 2)) == "6xH100"
    assert str(training_cluster(parse_gpus("2x8xH100"), 8)) == "8xH100"
    assert training_cluster(parse_gpus("2x8xH100"), 4) is None  # a server takes whole nodes across nodes
    # 16.06 GB of weights + 0.5 GB of activations + 8 x 1024 tokens of KV (1 GiB) = 0.207 of 80 GB: the 0.05 grid
    assert needed_memory_share(grpo(generation=Generation.vllm_colocate)) == 0.25


def test_plan_ranks_colocated_server_and_transformers_with_generation_share() -> None:
    base = build_config(model="llama-3.1-8b", gpus="8xH100", stage=Stage.grpo, check=False)
    result = plan(base, SearchSpace(methods=(Method.lora,)))
    kinds = {e.config.generation for e in result.plans}
    assert kinds == set(Generation)
    best = {g: next(e for e in result.plans if e.config.generation is g) for g in Generation}
    # vLLM decodes with the whole batch at once at the weights' bandwidth; transformers' eager loop is slower
    assert best[Generation.vllm_colocate].time.tokens_per_s > best[Generation.transformers].time.tokens_per_s
    server = best[Generation.vllm_server].config
    assert server.world_size + server.vllm_server_gpus == 8 and server.global_batch == 64
    for est in best.values():
        assert 0 < est.time.breakdown_s["generation"] < est.time.step_time_s
    assert all(e.config.tp == 1 and e.config.pp == 1 for e in result.plans)


def test_fixed_generation_settings_are_kept() -> None:
    from planner.options import RolloutArgs

    space = rollout_space(RolloutArgs(generation=Generation.vllm_colocate, vllm_memory=0.5, vllm_sleep=False),
                          Stage.grpo)
    assert space == RolloutSpace(generations=(Generation.vllm_colocate,), vllm_memory=0.5, vllm_sleep=(False,))
    base = build_config(model="llama-3.1-8b", gpus="8xH100", stage=Stage.grpo, check=False)
    result = plan(base, SearchSpace(methods=(Method.lora,), rollouts=replace(space, generation_steps=(1,))))
    assert result.plans and all(e.config.rollout.generation is Generation.vllm_colocate and e.config.vllm_memory == 0.5
                                and not e.config.vllm_sleep for e in result.plans)


def test_cli_plan_json_shows_generation_share(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "plan", "--model", "llama-3.1-8b", "--gpus", "8xH100", "--stage", "grpo",
                         "--method", "lora", "--generation-steps", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    gens = {p["config"]["generation"] for p in data["plans"]}
    assert {"vllm-colocate", "vllm-server"} <= gens
    assert all(0 < p["generation_share"] < 1 for p in data["plans"])
