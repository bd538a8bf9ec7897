"""Published mixture-of-experts training throughputs as goldens for the time model (planner.timing, planner/moe.py).

NeMo AutoModel's performance summary (NVIDIA-NeMo/Automodel docs/performance-summary.md, last updated 2025-10-02,
DGX-H100, BF16, mock data with a balanced gate; each row's recipe in examples/benchmark/configs/): full training of
Qwen3-30B-A3B and gpt-oss-20B / 120B under FSDP2 with expert parallelism, sequences of 4096 tokens. Those runs
dispatch tokens with DeepEP, which overlaps the all-to-all with expert compute; the planner's expert-parallel plans
model transformers' own EP, whose collectives run in line, so the comparison hides the all-to-all behind the
experts' compute of the step as far as it fits (planner.moe.overlapped_ep_comm_s). The runs' TransformerEngine
kernels ("TE" in the table's kernel column: fused RMSNorm, rotary and SwiGLU) are planned as the planner's fused
elementwise kernels (Kernels.liger: one read and one write per tensor), as the Megatron goldens are
(tests/validation/throughput_cases.py); DeepEP's fused token permutation is not modelled (the planner counts
transformers' eager gather, weighting and scatter around the grouped GEMMs, planner/kernels.py
mlp_elementwise_bytes), so the planner errs slow there. Tolerance 25%, as for the dense goldens
(tests/validation/test_throughput_goldens.py), chosen before the comparison.

Native Transformers v5 on Qwen3-30B-A3B (NVIDIA and Hugging Face, "Accelerating Transformers Fine-Tuning with
NVIDIA NeMo AutoModel", Hugging Face blog, 2026-06-24: 3,075 tokens/s/GPU on 8 H100s at 4096 tokens, 68.2 GiB
peak) is a strict xfail: the post gives no batch or checkpointing setting; at the one the planner fits in the
published peak (micro-batch 1, full checkpointing, transformers' eager kernels) it predicts 1.5x the speed
(2.3x before the time model counted the eager elementwise ops of the MoE layer: the gather, weighting and scatter
around the grouped GEMMs and the q/k norms, about three times the layer's GEMM time at this shape; 2x after that,
1.5x after later rounds' attention and elementwise counts and Hopper's sustained GEMM rate). What makes the
rest is not identified (the post credits DeepEP's overlap, TransformerEngine kernels and expert parallelism, none of
which the native run has). Run with `pytest -s` to see every deviation.
"""

from __future__ import annotations

import dataclasses

import pytest

from planner import moe
from planner.build import build_config
from planner.memory import memory_per_gpu
from planner.strategy import Attn, FsdpStrategy, GradCkpt, Kernels, Method
from planner.timing import step_time

TOLERANCE = 0.25

# (id, model, gpus, ep, micro-batch (= local batch), grad accumulation, checkpointing, published tokens/s/GPU)
NEMO_AUTOMODEL = [
    ("qwen3-30b-a3b-ep8", "qwen3-30b-a3b", "8xH100", 8, 4, 16, GradCkpt.full, 12040.0),
    ("gpt-oss-20b-ep8", "gpt-oss-20b", "8xH100", 8, 2, 16, GradCkpt.none, 13058.0),
    ("gpt-oss-120b-ep64", "gpt-oss-120b", "8x8xH100", 64, 2, 4, GradCkpt.none, 7626.0),
]


def _config(model: str, gpus: str, ep: int, mb: int, ga: int, ckpt: GradCkpt, seq: int = 4096,
            kernels: Kernels = Kernels.liger):
    cfg = build_config(model=model, gpus=gpus, method=Method.full, fsdp=FsdpStrategy.full_shard, micro_batch=mb,
                       grad_accum=ga, seq_len=seq, grad_ckpt=ckpt, attn=Attn.flash, kernels=kernels, check=False)
    return dataclasses.replace(cfg, ep=ep)


def _overlapped_tokens_per_s_per_gpu(cfg) -> float:
    t = step_time(cfg)
    parts = t.breakdown_s
    expert_compute = (parts["compute"] + parts["recompute"]) * moe.expert_compute_share(cfg.model)
    step = t.step_time_s - parts["ep_comm"] + moe.overlapped_ep_comm_s(parts["ep_comm"], expert_compute)
    return cfg.global_batch * cfg.seq_len / step / cfg.world_size


@pytest.mark.parametrize(("case", "model", "gpus", "ep", "mb", "ga", "ckpt", "published"), NEMO_AUTOMODEL,
                         ids=[c[0] for c in NEMO_AUTOMODEL])
def test_nemo_automodel_moe_training(case: str, model: str, gpus: str, ep: int, mb: int, ga: int, ckpt: GradCkpt,
                                     published: float) -> None:
    cfg = _config(model, gpus, ep, mb, ga, ckpt)
    predicted = _overlapped_tokens_per_s_per_gpu(cfg)
    dev = predicted / published - 1
    print(f"\nNeMo AutoModel performance summary, {case}: published {published:,.0f}, ftplan {predicted:,.0f} "
          f"tokens/s/GPU ({100 * dev:+.1f}%, tolerance {TOLERANCE:.0%})")
    assert abs(dev) <= TOLERANCE


@pytest.mark.xfail(strict=True, reason="native v5 MoE path 1.5x slower than the model: cause not identified, "
                                       "see the module docstring")
def test_native_transformers_v5_qwen3_moe() -> None:
    cfg = _config("qwen3-30b-a3b", "8xH100", 1, 1, 1, GradCkpt.full, kernels=Kernels.eager)
    assert memory_per_gpu(cfg).total / 2**30 == pytest.approx(68.2, rel=0.15)  # the setting that fits the peak
    predicted = step_time(cfg).tokens_per_s / cfg.world_size
    dev = predicted / 3075.0 - 1
    print(f"\nHF blog, native Transformers v5 Qwen3-30B-A3B: published 3,075, ftplan {predicted:,.0f} "
          f"({100 * dev:+.1f}%)")
    assert abs(dev) <= TOLERANCE
