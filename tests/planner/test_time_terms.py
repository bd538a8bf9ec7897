"""The time terms that decide rankings (issue 11): GEMM shapes, collective calls, framework hooks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner import collectives as col
from planner import kernels as kn
from planner.build import build_config
from planner.gpus import gpu_from_name
from planner.models import resolve
from planner.strategy import FsdpStrategy, GradCkpt, Method, Optimizer, Precision
from planner.timing import optimizer_bytes_per_param, step_time


def test_wave_quantization_follows_the_nvidia_guide() -> None:
    """NVIDIA GEMM guide, Sec. 3.2: on 108 SMs, 108 tiles fill one wave exactly; one tile more needs a second
    wave that is almost empty. With 256 x 128 tiles, m x n = 2304 x 1536 is 9 x 12 = 108 tiles."""
    assert kn.wave_efficiency(2304, 1536, 108) == pytest.approx(1.0)
    assert kn.wave_efficiency(2304 + 1, 1536 + 1, 108) < 0.8
    assert kn.wave_efficiency(64, 64, 0) == 1.0  # the CPU has no waves


def test_lora_adapters_are_memory_bound() -> None:
    a100 = gpu_from_name("A100-80G")
    adapter = kn.Gemm(4096, 4096, 8)
    math_s = 2 * 4096 * 4096 * 8 / (a100.peak_bf16_flops_per_s * 0.55)
    assert kn.gemm_time_s(adapter, a100, a100.peak_bf16_flops_per_s, 0.55, 2.0) > 5 * math_s


def test_cpu_gemm_rate_grows_with_rows() -> None:
    cpu = gpu_from_name("CPU")
    rate = [2 * m * 512 * 512 / kn.gemm_time_s(kn.Gemm(m, 512, 512), cpu, cpu.peak_fp32_flops_per_s, 1.0, 4.0)
            for m in (1, 4, 64)]
    assert rate[0] < rate[1] < rate[2] <= cpu.peak_fp32_flops_per_s


def test_collective_calls_follow_each_engine() -> None:
    assert col.ddp_buckets(2**20) == 1 and col.ddp_buckets(2**20 + 1) == 2
    assert col.ddp_buckets(2**20 + 25 * 2**20 * 3) == 4
    m = resolve("llama-2-7b")
    # 32 layers x (7 linears + layer, attention, MLP, activation, two norms) + 6 top-level modules
    assert col.zero3_modules(m, 32, Method.full, ("all",)) == 32 * 13 + 6
    assert col.zero3_modules(m, 32, Method.lora, ("all",)) == 32 * (13 + 4 * 7) + 8
    assert col.param_modules(m, 32, Method.full, ("all",)) == 32 * 9 + 3
    assert col.fsdp_units(32) == 33


def test_micro_batch_no_longer_ties_on_gpus() -> None:
    """Issue 11: LoRA mb1/2/4 used to predict exactly the same tokens/s; larger GEMMs fill the waves better."""
    speeds = [step_time(build_config(model="7b", gpus="8xA800", method=Method.lora, zero=1, micro_batch=mb,
                                     grad_accum=8 // mb)).tokens_per_s for mb in (1, 2, 4)]
    assert len({round(s) for s in speeds}) == 3
    assert speeds[2] > speeds[0]


@pytest.mark.parametrize(("model", "gpus"), [("7b", "8xA800"), ("llama-3.2-1b", "8xA100-80G")])
def test_zero3_ranks_below_zero1_and_zero2(model: str, gpus: str) -> None:
    """Issue 11 and the HF DeepSpeed guide: ZeRO-1/2 above ZeRO-3 for full fine-tuning at mb 2, ga 4."""
    tps = {z: step_time(build_config(model=model, gpus=gpus, method=Method.full, zero=z, micro_batch=2,
                                     grad_accum=4, check=False)).tokens_per_s for z in (1, 2, 3)}
    assert tps[3] < tps[2] and tps[3] < tps[1]


def test_zero3_pays_hooks_and_regathers_under_checkpointing() -> None:
    plain = step_time(build_config(model="7b", gpus="8xA800", method=Method.full, zero=3, micro_batch=2,
                                   grad_accum=4, check=False))
    ckpt = step_time(build_config(model="7b", gpus="8xA800", method=Method.full, zero=3, micro_batch=2,
                                  grad_accum=4, grad_ckpt=GradCkpt.full, check=False))
    assert plain.breakdown_s["framework"] > 0
    # the recomputed forward runs the module hooks once more (1.5 passes); the gradient path runs once
    module_hooks_s = 4 * col.zero3_host_ops(resolve("7b"), 32, Method.full, ("all",)) * \
        gpu_from_name("A800").host_op_s
    assert ckpt.breakdown_s["framework"] - plain.breakdown_s["framework"] == pytest.approx(0.5 * module_hooks_s,
                                                                                            rel=0.05)
    assert ckpt.dp_comm_total_s > plain.dp_comm_total_s


def test_cpu_communication_is_not_hidden() -> None:
    """On the CPU device gloo runs on the ranks' own cores: DDP's all-reduce is all exposed, at the measured
    cost of a collective beside compute (busy_comm_factor x its time alone)."""
    cfg = build_config(model="llama-3.2-1b", gpus="2xCPU", method=Method.full, seq_len=128, check=False)
    t = step_time(cfg)
    factor = cfg.cluster.gpu.busy_comm_factor
    assert factor >= 1.0
    assert t.breakdown_s["dp_comm"] == pytest.approx(factor * t.dp_comm_total_s)


def test_cpu_synchronous_collectives_cost_their_time_alone() -> None:
    """Over gloo only a collective issued asynchronously runs beside the rank's compute (DDP's buckets, ZeRO-3's
    prefetched gathers) and costs the busy factor; ZeRO-1/2's bucket all-reduce, ZeRO-3's reduce-scatter and every
    FSDP collective are synchronous (the main thread waits in them) and cost their time alone plus the measured
    `sync_call_s` per call."""
    def cpu(sync_call_s: float = 0.0, **kw):  # a busy factor of 2 makes the cases plain
        cfg = build_config(model="llama-3.2-1b", gpus="2xCPU", method=Method.full, seq_len=128, check=False, **kw)
        gpu = replace(cfg.cluster.gpu, busy_comm_factor=2.0, sync_call_s=sync_call_s)
        return replace(cfg, cluster=replace(cfg.cluster, gpu=gpu))

    from planner.engines import zero

    for kw in ({"zero": 1}, {"zero": 2}, {"fsdp": FsdpStrategy.full_shard}):
        t = step_time(cpu(**kw))
        assert t.breakdown_s["dp_comm"] == pytest.approx(t.dp_comm_total_s), kw
        slow = step_time(cpu(2e-3, **kw))
        calls = (zero.reduce_calls(cpu(**kw), 16) + zero.ZERO12_ALLGATHER_CALLS if "zero" in kw
                 else 17 + 16 + 17)  # FSDP2, tied head: 16 layers and the tail [norm, embedding, head] gathered
        # in forward, the layers again in backward (the tail stays gathered), all 17 reduced (fsdp2_traffic)
        assert slow.breakdown_s["dp_comm"] - t.breakdown_s["dp_comm"] == pytest.approx(2e-3 * calls), kw
    z3 = step_time(cpu(zero=3))
    assert z3.dp_comm_total_s < z3.breakdown_s["dp_comm"] < 2 * z3.dp_comm_total_s
    ddp = step_time(cpu())
    assert ddp.breakdown_s["dp_comm"] == pytest.approx(2 * ddp.dp_comm_total_s)


def test_cpu_narrow_outputs_run_at_their_measured_share() -> None:
    """LoRA's r = 8 outputs: a 512 x 1024 x 8 GEMM runs at the fitted share for n = 8, interpolated between
    sizes, the full row rate above the widest; on a GPU the factor is 1 (waves and roofline instead)."""
    cpu = replace(gpu_from_name("CPU"), gemm_narrow_cols=((8, 0.2), (16, 0.8), (32, 1.0)))
    row = kn.cpu_gemm_shape(kn.Gemm(512, 1024, 1024), cpu)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 1024, 8), cpu) == pytest.approx(0.2 * row)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 1024, 12), cpu) == pytest.approx(0.5 * row)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 1024, 4), cpu) == pytest.approx(0.2 * row)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 1024, 8), gpu_from_name("A100-80G")) == 1.0


def test_the_widest_measured_size_keeps_its_share() -> None:
    """The last measured size is a point of the table (LoRA's r = 64 on the CPU entry: n = 64 at 0.74, k = 64 at
    0.62), not the first size above it: only wider shapes run at the full row rate."""
    cpu = replace(gpu_from_name("CPU"), gemm_narrow_cols=((8, 0.2), (64, 0.7)), gemm_narrow_inner=((8, 0.3), (64, 0.6)))
    row = kn.cpu_gemm_shape(kn.Gemm(512, 1024, 1024), cpu)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 1024, 64), cpu) == pytest.approx(0.7 * row)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 64, 1024), cpu) == pytest.approx(0.6 * row)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 1024, 65), cpu) == pytest.approx(row)


def test_cpu_narrow_inner_dimension_runs_at_its_measured_share() -> None:
    """LoRA's k = r GEMMs (lora_B's forward, lora_A's input gradient) run at the fitted share for their inner
    dimension; a wide k is untouched, and a GPU has no such table."""
    cpu = replace(gpu_from_name("CPU"), gemm_narrow_cols=(), gemm_narrow_inner=((8, 0.25), (64, 1.0)))
    row = kn.cpu_gemm_shape(kn.Gemm(512, 1024, 1024), cpu)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 8, 1024), cpu) == pytest.approx(0.25 * row)
    assert kn.cpu_gemm_shape(kn.Gemm(512, 384, 1024), cpu) == pytest.approx(row)
    assert gpu_from_name("A100-80G").gemm_narrow_inner == ()


def test_torch_adamw_step_counts_its_foreach_kernels() -> None:
    """torch's multi-tensor AdamW: 12 reads + 8 writes per parameter (torch/optim/adam.py); bitsandbytes'
    fused 8-bit step reads and writes the param, grad and 1-byte states once."""
    assert optimizer_bytes_per_param(Optimizer.adamw, Precision.fp32) == 80.0
    assert optimizer_bytes_per_param(Optimizer.adamw_8bit, Precision.fp32) == 4 * 3 + 4 * 1
    assert optimizer_bytes_per_param(Optimizer.sgd, Precision.fp32) == 32.0


def test_lora_dropout_costs_its_rng_where_measured() -> None:
    """Every adapted linear draws its own mask over its input; on a device with a measured dropout rate
    lora_dropout > 0 costs those draws, and 0 (peft's nn.Identity) costs none."""
    m = resolve("llama-3.2-1b")
    h, i = m.hidden_size, m.intermediate_size
    assert kn.lora_dropout_values(m, 10, ("all",)) == 10 * (6 * h + i)  # q k v o gate up: h; down: i
    base = build_config(model="llama-3.2-1b", gpus="2xCPU", method=Method.lora, seq_len=128, check=False)
    cpu = replace(base.cluster.gpu, dropout_values_per_s=5e7)
    cfg = replace(base, cluster=replace(base.cluster, gpu=cpu))
    no_drop = replace(cfg, adapter=replace(cfg.adapter, lora_dropout=0.0))
    extra = step_time(cfg).step_time_s - step_time(no_drop).step_time_s
    draws = cfg.grad_accum * m.num_layers * kn.lora_dropout_values(m, cfg.micro_batch * 128, ("all",)) / 5e7
    assert extra > 0.9 * draws


def test_measured_dropout_still_pays_its_backward_mask_multiply() -> None:
    """torch's CPU dropout (Dropout.cpp _dropout_impl: input * noise, the noise in the input's dtype) multiplies the
    branch's gradient by the noise in backward; the measured rate prices the forward only, so the backward's
    3 values per dropped input value stay traffic; a recomputed forward (forward_only) has none of it."""
    m = resolve("llama-3.2-1b")
    args = (m, 10, ("all",), 1, 4.0)
    plain = kn.lora_elementwise_bytes(*args, dropout=False)
    measured = kn.lora_elementwise_bytes(*args, dropout=False, rng_measured=True)
    assert measured - plain == pytest.approx(3 * 4.0 * kn.lora_dropout_values(m, 10, ("all",)))
    assert kn.lora_elementwise_bytes(*args, dropout=False, rng_measured=True, forward_only=True) == \
        kn.lora_elementwise_bytes(*args, dropout=False, forward_only=True)


def test_lora_weight_gradients_run_as_autograd_shapes_them() -> None:
    """F.linear's weight enters mm transposed, so autograd's mm_mat2_backward computes grad.t() @ input: A's gradient
    is an r-row GEMM (r x rows x k), B's an r-wide output (n x rows x r), as torch.profiler showed in a LoRA step."""
    m = resolve("llama-3.2-1b")
    _, bwd = kn.layer_gemms(m, 512, Method.lora, 8, ("q_proj",), False, 1)
    h = m.hidden_size
    lora_bwd = [(g.m, g.k, g.n) for g in bwd if 8 in (g.m, g.k, g.n)]
    q_out = next(lin.out_features for lin in m.linears() if lin.name == "q_proj")
    assert lora_bwd == [(512, q_out, 8), (512, 8, h), (8, 512, h), (q_out, 512, 8)]


def test_gloo_gather_and_scatter_run_at_their_measured_times() -> None:
    """A device that measured all-gather / reduce-scatter apart from the all-reduce (gloo) prices them from its
    points, interpolated by size; without them (NCCL) both are the ring's half of an all-reduce."""
    from planner.comm import Group, allgather_time_s, allreduce_time_s, measured_collective_s, reduce_scatter_time_s

    ring = Group(n=2, per_node=2, intra_bytes_per_s=1e9, inter_bytes_per_s=1e9, alpha_s=1e-4)
    assert allgather_time_s(1e8, ring) == reduce_scatter_time_s(1e8, ring) == pytest.approx(
        allreduce_time_s(1e8, ring) / 2)
    pts = ((2**20, 2e-3), (2**22, 5e-3), (2**24, 30e-3))
    gloo = replace(ring, gather_points=pts, scatter_points=tuple((b, 2 * t) for b, t in pts))
    assert allgather_time_s(2**22, gloo) == pytest.approx(5e-3)
    assert allgather_time_s(5 * 2**19, gloo) == pytest.approx(3.5e-3)  # halfway between 1 and 4 MiB
    assert reduce_scatter_time_s(2**22, gloo) == pytest.approx(10e-3)
    assert allgather_time_s(2**25, gloo) == pytest.approx(30e-3 + 25e-3 * 2**24 / (2**24 - 2**22))  # last slope
    assert allgather_time_s(1.0, gloo) == pytest.approx(1e-3, rel=1e-3)  # the first segment extended down
    assert allreduce_time_s(1e8, gloo) == allreduce_time_s(1e8, ring)
    # a device fit's all-reduce points replace the alpha-beta line (gloo jumps between 256 KiB and 1 MiB)
    jumpy = replace(ring, allreduce_points=((2**18, 0.6e-3), (2**20, 3.3e-3), (2**22, 5.4e-3)))
    assert allreduce_time_s(2**20, jumpy) == pytest.approx(3.3e-3)
    assert allreduce_time_s(5 * 2**18, jumpy) == pytest.approx(3.3e-3 + 2.1e-3 / 12)
    assert allreduce_time_s(2**20, replace(jumpy, n=4, per_node=4)) == pytest.approx(
        measured_collective_s(jumpy.allreduce_points, 1.5 * 2**20, 2, 1e-4) + 4e-4)
    # 4 ranks move 3/4 of the full size each, as 2 ranks do at 1.5 x, and run 2 more hops
    assert measured_collective_s(pts, 2**22, 4, 1e-4) == pytest.approx(measured_collective_s(pts, 1.5 * 2**22, 2, 1e-4)
                                                                      + 2e-4)


def test_zero12_all_reduce_each_bucket_and_gather_once() -> None:
    """DeepSpeed 0.19.8 ZeRO-1/2 all-reduce every whole reduce bucket (use_multi_rank_bucket_allreduce) and gather
    the updated partitions with one all_gather_into_tensor per parameter group: on a ring of 8 the gradient
    reduction moves an all-reduce's bytes, twice a reduce-scatter's."""
    from planner import parallel_comm as pc
    from planner.comm import allgather_time_s, allreduce_time_s, split_time_s
    from planner.engines import zero

    cfg = build_config(model="7b", gpus="8xA800", method=Method.full, zero=2, micro_batch=2, grad_accum=1,
                       check=False)
    g = pc.dp_group(cfg.cluster, 1, 1, 8, 0.75)
    grad_bytes = 6.7e9 * 2
    total, _, _ = zero.dp_comm(cfg, g, 6.7e9, 13.4e9, 1.0, 2.0, 0.75)
    calls = zero.reduce_calls(cfg, 32)
    assert total == pytest.approx(split_time_s(allreduce_time_s, grad_bytes, calls, g)
                                  + split_time_s(allgather_time_s, grad_bytes, zero.ZERO12_ALLGATHER_CALLS, g)
                                  + sum(zero.zero12_bucket_passes_s(cfg, 6.7e9)))


@pytest.mark.parametrize(("precision", "elem"), [(Precision.fp32, 4.0), (Precision.bf16_mixed, 2.0)])
def test_zero12_bucket_passes_read_and_write_each_gradient(precision: Precision, elem: float) -> None:
    """DeepSpeed ZeRO-1/2's own passes per reduction (stage_1_and_2.py): the hook's copy into the bucket on the
    compute stream; divide, flatten and the copy back of this rank's 1/dp on the reduction path; each a read and a
    write of the bucket's dtype at the elementwise bandwidth."""
    from planner.engines import zero

    cfg = build_config(model="7b", gpus="8xA800", method=Method.full, zero=2, precision=precision, check=False)
    bw = cfg.cluster.gpu.elementwise_bytes_per_s
    copy_in, reduce_side = zero.zero12_bucket_passes_s(cfg, 1e9)
    assert copy_in == pytest.approx(2 * elem * 1e9 / bw)
    assert reduce_side == pytest.approx((4 + 2 / 8) * elem * 1e9 / bw)
