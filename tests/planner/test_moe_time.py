"""Mixture of experts in the time model (planner/moe.py, planner/compute.py, planner/kernels.py): a MoE model's
predicted speed follows its active parameters, not its total; how transformers dispatches the experts changes the
time (grouped GEMM where torch has the kernel, one launch per expert elsewhere; Llama 4's experts run on every
token); expert parallelism adds its all-to-all and is ranked but not runnable."""

from __future__ import annotations

import dataclasses

import pytest

from planner.build import build_config
from planner.compute import flops_per_token, training_of
from planner.models import from_name
from planner.params import active_params, total_params
from planner.runnable import runnable, unrunnable_reasons
from planner.strategy import Attn, FsdpStrategy, GradCkpt, Method
from planner.timing import step_time
from planner.validity import problems


def _tokens_per_s(model: str, gpus: str = "8xH100", **kw) -> float:
    kw = {"method": Method.full, "zero": 3, "micro_batch": 4, "seq_len": 4096, "attn": Attn.flash,
          "grad_ckpt": GradCkpt.full, **kw}
    return step_time(build_config(model=model, gpus=gpus, **kw)).tokens_per_s


def test_moe_speed_follows_active_parameters() -> None:
    """Qwen3-30B-A3B (30.5B total, 3.3B active) against Qwen3-32B (32.8B, dense, about the same total) and Qwen3-4B
    (4.0B dense, about its active size): far faster than the dense model of its total size (more than 3x), though
    not as much faster as its FLOPs alone would allow (small per-expert GEMMs fill fewer tiles, the dispatch costs
    host ops, and transformers' eager gather, weighting and scatter around the grouped GEMMs move about as many
    bytes per token as its q/k/v and norms do: planner/kernels.py mlp_elementwise_bytes, checked by
    tests/profiler/test_elementwise_bytes.py), and of the order of the dense model of its active size."""
    moe, dense_total, dense_active = (from_name(n) for n in ("qwen3-30b-a3b", "qwen3-32b", "qwen3-4b"))
    assert total_params(moe) == pytest.approx(total_params(dense_total), rel=0.1)
    assert active_params(moe) < 0.12 * total_params(moe)
    speed = {n: _tokens_per_s(n) for n in ("qwen3-30b-a3b", "qwen3-32b", "qwen3-4b")}
    flops = {m.name: flops_per_token(m, training_of(build_config(model=m.name, gpus="8xH100", seq_len=4096,
                                                                 method=Method.full))).model
             for m in (moe, dense_total, dense_active)}
    flop_ratio = flops["qwen3-32b"] / flops["qwen3-30b-a3b"]
    speed_ratio = speed["qwen3-30b-a3b"] / speed["qwen3-32b"]
    assert 3.0 < speed_ratio < flop_ratio, (speed_ratio, flop_ratio)
    assert 0.5 < speed["qwen3-30b-a3b"] / speed["qwen3-4b"] < 1.5


def test_experts_without_a_grouped_kernel_run_slower() -> None:
    """V100s (compute capability 7.0) have no grouped GEMM in torch: transformers' fallback launches one matmul per
    expert, each its own partly filled wave, and the host dispatches its loop."""
    from planner import kernels as kn
    from planner import moe
    from planner.gpus import gpu_from_name

    a100, v100 = gpu_from_name("A100-80G"), gpu_from_name("V100-32G")
    assert moe.grouped_mm_available(a100) and not moe.grouped_mm_available(v100)
    m = from_name("qwen3-30b-a3b")
    assert moe.moe_host_ops_per_micro_batch(m, v100, 48, 3) > 10 * moe.moe_host_ops_per_micro_batch(m, a100, 48, 3)
    # 128 experts of 64 routed rows each (micro-batch 1 x 1024 tokens, top-8): one grouped kernel shares its waves
    assert moe.grouped_wave_efficiency(64, 1536, 128, a100.sm_count, kn.TILES) > \
        moe.looped_wave_efficiency(64, 1536, a100.sm_count, kn.TILES)


def test_llama4_experts_run_every_token() -> None:
    """transformers' Llama 4 multiplies every token by every expert (torch.bmm over all 16): its forward FLOPs
    are those of all experts, not of the top-1 its router picks."""
    m = from_name("llama-4-scout-17b-16e")
    tr = training_of(build_config(model=m.name, gpus="8xH100", seq_len=2048, check=False))
    per_token = flops_per_token(m, tr).model
    assert per_token > 3 * 6 * active_params(m)


def test_expert_parallel_plans_are_ranked_not_run() -> None:
    base = build_config(model="qwen3-30b-a3b", gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard,
                        micro_batch=4, seq_len=4096, check=False)
    ep8 = dataclasses.replace(base, ep=8)
    assert problems(ep8) == [] and str(ep8).startswith("FSDP-TP1-PP1-DP8-EP8")
    assert not runnable(ep8) and "DistributedConfig(ep_size=8)" in unrunnable_reasons(ep8)[0]
    parts = step_time(ep8).breakdown_s
    assert parts["ep_comm"] > 0 and step_time(base).breakdown_s["ep_comm"] == 0
    dense = dataclasses.replace(build_config(model="qwen3-8b", gpus="8xH100", fsdp=FsdpStrategy.full_shard,
                                             check=False), ep=2)
    assert "dense" in problems(dense)[0]
    deepspeed = dataclasses.replace(build_config(model="qwen3-30b-a3b", gpus="8xH100", zero=3, check=False), ep=2)
    assert any("FSDP2" in p for p in problems(deepspeed))
