"""The time model's parts: FLOP counts, collective costs, the bubble, overlap, offload, job time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner import comm
from planner.calibration import Calibration
from planner.compute import Training, flops_per_token, megatron_iteration_flops
from planner.errors import PlanError
from planner.estimate import estimate, estimate_to_dict
from planner.gpus import GPUS, Cluster, parse_gpus
from planner.models import ModelSpec, from_name
from planner.pipeline import bubble_fraction
from planner.strategy import (
    Engine,
    FsdpStrategy,
    GradCkpt,
    Method,
    Offload,
    PipeSchedule,
    Precision,
    Quant,
    TrainConfig,
    ZeroStage,
)
from planner.timing import BREAKDOWN_KEYS, job_size, job_time, step_time

GPT = ModelSpec(name="gpt-test", model_type="bloom", vocab_size=51200, hidden_size=2048, intermediate_size=8192,
                num_layers=24, num_heads=16, num_kv_heads=16, head_dim=128, tie_embeddings=True, qkv_bias=True,
                linear_bias=True, gated_mlp=False, layernorm_bias=True, max_seq_len=2048)
LLAMA = from_name("7b")


def cfg(**kw) -> TrainConfig:
    base = dict(model=LLAMA, cluster=parse_gpus("8xA800"), method=Method.full, engine=Engine.deepspeed,
                zero=ZeroStage.GRADIENTS, micro_batch=2, grad_accum=4)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("recompute", [True, False])
def test_gpt_flops_equal_megatron_eq3(recompute: bool) -> None:
    """Narayanan et al. 2021, eq. 3, exactly: a GPT layer's matmuls are 24 h^2 + 4 s h per token."""
    tr = Training(method=Method.full, grad_ckpt=GradCkpt.full if recompute else GradCkpt.none, seq_len=2048)
    per_token = flops_per_token(GPT, tr)
    flops = per_token.hardware if recompute else per_token.model
    B = 8
    assert flops * B * 2048 == pytest.approx(megatron_iteration_flops(B, 2048, 24, 2048, 51200, recompute), rel=1e-12)


def test_lora_skips_weight_gradients() -> None:
    full = flops_per_token(LLAMA, Training(method=Method.full)).model
    lora = flops_per_token(LLAMA, Training(method=Method.lora, lora_r=8)).model
    assert 4 / 6 < lora / full < 4 / 6 + 0.03  # 4x instead of 6x, plus attention, head and adapters


def test_frozen_layers_between_lora_and_full() -> None:
    full = flops_per_token(LLAMA, Training(method=Method.full)).model
    half = flops_per_token(LLAMA, Training(method=Method.full, freeze_layers=16)).model
    lora = flops_per_token(LLAMA, Training(method=Method.lora)).model
    assert lora < half < full


def test_selective_recompute_adds_attention_only() -> None:
    none = flops_per_token(LLAMA, Training(grad_ckpt=GradCkpt.none, seq_len=4096))
    sel = flops_per_token(LLAMA, Training(grad_ckpt=GradCkpt.selective, seq_len=4096))
    full = flops_per_token(LLAMA, Training(grad_ckpt=GradCkpt.full, seq_len=4096))
    assert sel.model == none.model == full.model
    assert sel.hardware - sel.model == pytest.approx(LLAMA.num_layers * 4 * 4096 * LLAMA.q_dim)
    assert none.hardware < sel.hardware < full.hardware


def test_moe_counts_active_experts() -> None:
    m = from_name("mixtral-8x7b")
    dense_equivalent = replace(m, experts_per_token=m.num_experts)
    active = flops_per_token(m, Training()).model
    everything = flops_per_token(dense_equivalent, Training()).model
    assert active < 0.4 * everything


def test_ring_costs_match_nccl_bus_factors() -> None:
    M, n, B = 1e9, 8, 100e9
    assert comm.ring_allreduce_time_s(M, n, B, 0.0) == pytest.approx(2 * 7 / 8 * M / B)
    assert comm.ring_allgather_time_s(M, n, B, 0.0) == pytest.approx(7 / 8 * M / B)
    assert comm.ring_allreduce_time_s(M, 1, B) == 0.0


def test_hierarchical_uses_the_network_for_the_shard_only() -> None:
    g = comm.Group(n=16, per_node=8, intra_bytes_per_s=200e9, inter_bytes_per_s=25e9)
    t = comm.allreduce_time_s(1e9, g)
    inter = comm.ring_allreduce_time_s(1e9 / 8, 2, 25e9, comm.ALPHA_INTER_S)
    assert inter < t < inter + 2 * comm.ring_allgather_time_s(1e9, 8, 200e9) + 1e-12
    # a flat ring over the network would move 2 x 15/16 of the message through each NIC
    assert t < comm.ring_allreduce_time_s(1e9, 16, 25e9)


def test_zero3_moves_one_and_a_half_times_ddp() -> None:
    """ZeRO paper Sec. 7: ZeRO-3 communicates 3 x the parameter bytes per rank, DDP 2 x (1.5x)."""
    z0 = step_time(cfg(zero=ZeroStage.DISABLED, grad_accum=1)).dp_comm_total_s
    z3 = step_time(cfg(zero=ZeroStage.WEIGHTS, grad_accum=1)).dp_comm_total_s
    assert z3 / z0 == pytest.approx(1.5, rel=0.01)


def test_lora_gradients_are_cheap_to_reduce() -> None:
    full = step_time(cfg(engine=Engine.ddp, zero=ZeroStage.DISABLED)).dp_comm_total_s
    lora = step_time(cfg(engine=Engine.ddp, zero=ZeroStage.DISABLED, method=Method.lora)).dp_comm_total_s
    assert lora < full / 50


def test_overlap_hides_reduction_under_backward() -> None:
    t = step_time(cfg(zero=ZeroStage.DISABLED, micro_batch=4, grad_accum=2))
    assert 0 < t.breakdown_s["dp_comm"] < t.dp_comm_total_s


def test_bubble() -> None:
    assert bubble_fraction(4, 16) == pytest.approx(3 / 16)
    assert bubble_fraction(4, 16, PipeSchedule.interleaved, 2) == pytest.approx(3 / 32)
    assert bubble_fraction(1, 16) == 0.0
    t = step_time(cfg(zero=ZeroStage.OPTIMIZER_STATES, pp=4, micro_batch=1, grad_accum=16))
    work = t.breakdown_s["compute"] + t.breakdown_s["recompute"]
    assert t.breakdown_s["pipeline_bubble"] == pytest.approx(work * 3 / 16)


def test_offload_costs_time() -> None:
    plain = step_time(cfg(zero=ZeroStage.WEIGHTS))
    opt = step_time(cfg(zero=ZeroStage.WEIGHTS, offload=Offload.optimizer))
    everything = step_time(cfg(zero=ZeroStage.WEIGHTS, offload=Offload.all))
    assert plain.breakdown_s["offload"] == 0
    assert plain.step_time_s < opt.step_time_s <= everything.step_time_s


def test_fsdp_strategies_and_tp_run() -> None:
    for fsdp in FsdpStrategy:
        cluster = Cluster(gpu=GPUS["A800"], nodes=2, gpus_per_node=8)
        t = step_time(cfg(engine=Engine.fsdp, zero=ZeroStage.DISABLED, fsdp=fsdp, cluster=cluster))
        assert t.step_time_s > 0 and set(t.breakdown_s) == set(BREAKDOWN_KEYS)
    tp = step_time(cfg(zero=ZeroStage.OPTIMIZER_STATES, tp=4, sequence_parallel=True))
    assert tp.breakdown_s["tp_comm"] > 0


def test_qlora_dequantizes() -> None:
    t = step_time(cfg(engine=Engine.ddp, zero=ZeroStage.DISABLED, method=Method.qlora, quant=Quant.nf4))
    assert t.breakdown_s["dequantize"] > 0


def test_rates_and_mfu_are_consistent() -> None:
    c = cfg()
    t = step_time(c)
    assert t.tokens_per_s == pytest.approx(c.tokens_per_step / t.step_time_s)
    assert t.samples_per_s == pytest.approx(c.global_batch / t.step_time_s)
    peak = c.cluster.gpu.peak_bf16_flops_per_s
    assert t.mfu == pytest.approx(t.model_flops_per_step / (t.step_time_s * 8 * peak))
    # below the GEMM efficiency (A800: 0.869), since attention, elementwise ops and communication are added
    assert 0 < t.mfu < 0.869
    assert sum(t.breakdown_s.values()) == pytest.approx(t.step_time_s)


def test_more_gpus_more_throughput() -> None:
    one = step_time(cfg(cluster=parse_gpus("1xA800"), engine=Engine.ddp, zero=ZeroStage.DISABLED,
                        method=Method.lora, grad_accum=4))
    eight = step_time(cfg(method=Method.lora, engine=Engine.ddp, zero=ZeroStage.DISABLED, grad_accum=4))
    assert 7 < eight.tokens_per_s / one.tokens_per_s <= 8


def test_calibration_replaces_efficiencies() -> None:
    c = cfg(zero=ZeroStage.WEIGHTS)
    base = step_time(c)
    # half the A800's GEMM efficiency (0.869) and half the link efficiency: every device term takes twice as long
    slow = step_time(c, Calibration(compute_efficiency=0.869 / 2, comm_efficiency=0.375))
    assert slow.breakdown_s["compute"] == pytest.approx(2 * base.breakdown_s["compute"])
    assert slow.dp_comm_total_s > 1.9 * base.dp_comm_total_s


def test_fp32_uses_fp32_peak() -> None:
    a = step_time(cfg(precision=Precision.fp32, engine=Engine.ddp, zero=ZeroStage.DISABLED))
    b = step_time(cfg(engine=Engine.ddp, zero=ZeroStage.DISABLED))
    # the GEMMs take 312 / 19.5 times as long; the memory-bound elementwise ops only twice (4 bytes, not 2), and
    # fp32 attention runs the full s x s matmuls at the GEMM rate instead of FlashAttention-2's causal blocks
    assert a.breakdown_s["compute"] / b.breakdown_s["compute"] == pytest.approx(312 / 19.5, rel=0.2)


def test_job_time() -> None:
    c = cfg()
    t = step_time(c)
    job = job_time(t, c, job_size(None, 1000, 3))
    assert job.steps == -(-3000 // c.global_batch)
    assert job.gpu_hours == pytest.approx(job.steps * t.step_time_s * 8 / 3600)
    by_tokens = job_time(t, c, job_size(1000 * 2048, None, 3))
    assert by_tokens.steps == job.steps
    assert job_size(None, None) is None
    for bad in ((0, None, 1), (None, 0, 1), (None, 5, 0), (5, 5, 1)):
        with pytest.raises(PlanError):
            job_size(*bad)


def test_estimate_dict_carries_time() -> None:
    d = estimate_to_dict(estimate(cfg()))
    assert {"step_time_s", "tokens_per_s", "samples_per_s", "mfu", "time_breakdown_s"} <= set(d)
    assert set(d["time_breakdown_s"]) == set(BREAKDOWN_KEYS)


def test_hopper_gemms_run_at_the_sustained_matmul_rate() -> None:
    """A training step is one long run at the board's power limit: Hopper's large GEMMs take the H200's measured
    Maximum Sustainable Matmul FLOPS (745 TFLOP/s, ml-engineering's mamf-finder), not the boost burst
    (planner/compute.py);
    the A100 keeps its MAMF (no sustained figure is published for it)."""
    from planner.compute import DEFAULT_COMPUTE_EFFICIENCY, compute_efficiency
    from planner.kernels import Gemm, gemm_time_s

    for name in ("H100", "H800", "H200"):
        assert compute_efficiency(name) * GPUS[name].peak_bf16_flops_per_s == pytest.approx(745e12, rel=1e-3)
    assert DEFAULT_COMPUTE_EFFICIENCY["A100-80G"] == 0.869
    h100 = GPUS["H100"]
    g = Gemm(8192, 4096, 4096)  # a Llama 2 7B projection at 2 x 4096 tokens
    rate = 2 * 8192 * 4096 * 4096 / gemm_time_s(g, h100, h100.peak_bf16_flops_per_s, compute_efficiency("H100"), 2.0)
    assert 0.7 * 745e12 < rate <= 745e12
