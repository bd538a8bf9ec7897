"""The CPU device's SDPA, optimizer and peft host terms: SDPA's CPU flash kernel at its measured time per computed score
element (planner/kernels.py cpu_sdpa_attention_s), the clip + AdamW step at its measured rate (planner/timing.py; on the
CPU torch's single-tensor loop, planner/torch_adamw.py), and
peft's host time per adapted linear (planner/kernels.py lora_host_s)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner import kernels as kn
from planner.build import build_config
from planner.engines import ddp
from planner.gpus import GPUS, SINGLE_OVER_FOREACH_TIME, SINGLE_TENSOR_HOST_OPS, gpu_from_name, with_device_fit
from planner.strategy import Attn, Method, Optimizer, Precision
from planner.timing import clip_bytes_per_param, optimizer_bytes_per_param, step_time
from planner.torch_adamw import (
    AdamwKernel,
    adamw_kernel,
    single_tensor_bytes_per_s,
    single_tensor_host_s,
    trainable_tensors,
)

# the rank-order benchmark's model (benchmarks/rank_order.py LLAMA_16M), as a config transformers reads
LLAMA_16M = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 8000, "hidden_size": 384,
             "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 6,
             "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


@pytest.mark.parametrize(("s", "share"), [(128, 1.0), (192, 1.0), (512, 1.0), (1024, 0.75), (4096, 0.5625)])
def test_cpu_flash_kernel_computes_whole_key_blocks(s: int, share: float) -> None:
    """Query blocks of 32 / 64 / 256 rows (below 192, below 768, from 768 queries), key blocks of 512 (at most s) run
    whole up to the block holding the last visible key: at 128 tokens every key of the square, at 1024 query block i
    of 256 rows runs ceil(256 (i + 1) / 512) key blocks: 2 + 2 + 4 + 4 of 16 256 x 256 tiles (0.75), at 4096
    72 of 128 half-blocks (0.5625)."""
    assert kn.cpu_flash_computed_scores(s) == pytest.approx(share * s * s)
    assert kn.cpu_flash_computed_scores(s, causal=False) == s * s
    assert [kn.cpu_flash_q_split(n) for n in (128, 191, 192, 767, 768)] == [32, 32, 64, 64, 256]


POINTS = ((128, 64, 4e-9, 12e-9), (512, 64, 3e-9, 8e-9), (128, 128, 7e-9, 24e-9), (512, 128, 5e-9, 14e-9))


def test_attention_element_time_interpolates_the_measured_points() -> None:
    gpu = replace(gpu_from_name("CPU"), sdpa_points=POINTS)
    assert kn.cpu_attention_element_s(gpu, 128, 64) == pytest.approx((4e-9, 12e-9))
    assert kn.cpu_attention_element_s(gpu, 512, 128) == pytest.approx((5e-9, 14e-9))
    assert kn.cpu_attention_element_s(gpu, 256, 64) == pytest.approx((3.5e-9, 10e-9))  # halfway in log length
    assert kn.cpu_attention_element_s(gpu, 4096, 64) == pytest.approx((3e-9, 8e-9))  # the longest measured
    assert kn.cpu_attention_element_s(gpu, 128, 96) == pytest.approx((5.5e-9, 18e-9))  # linear in the head size
    assert kn.cpu_attention_element_s(gpu, 128, 32) == pytest.approx((4e-9, 12e-9))  # never below the smallest's
    assert kn.cpu_attention_element_s(gpu, 128, 256) == pytest.approx((13e-9, 48e-9))  # extrapolated in the size


@pytest.fixture
def model_path(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(LLAMA_16M))
    return str(tmp_path)


def _cpu_cfg(model_path: str, **kw):
    base = dict(model=model_path, gpus="2xCPU", method=Method.full, precision=Precision.fp32, micro_batch=4,
                seq_len=128)
    return build_config(**{**base, **kw})


def test_cpu_sdpa_is_the_measured_kernel_per_computed_score(model_path) -> None:
    """The benchmark's full DDP mb4 step: 6 layers x 4 sequences x 6 heads x 128^2 computed scores at the entry's
    time per element, forward and backward; SDPA's share of the step grows by what the points add over the old
    count (the full square's FLOPs at the GEMM rate, backward 2x)."""
    cfg = _cpu_cfg(model_path)
    gpu = cfg.cluster.gpu
    fwd_e, bwd_e = kn.cpu_attention_element_s(gpu, 128, 64)
    fwd, bwd = kn.cpu_sdpa_attention_s(cfg.model, 4, 128, 1, gpu)
    assert (fwd, bwd) == pytest.approx((4 * 6 * 128 * 128 * fwd_e, 4 * 6 * 128 * 128 * bwd_e))
    without = replace(cfg, cluster=replace(cfg.cluster, gpu=replace(gpu, sdpa_points=())))
    old_attention = 3 * 6 * 4 * 128 * 4 * 128 * 384 / gpu.peak_fp32_flops_per_s  # 4 s q_dim per token, x3 passes
    added = step_time(cfg).breakdown_s["compute"] - step_time(without).breakdown_s["compute"]
    assert added == pytest.approx(6 * (fwd + bwd) - old_attention, rel=1e-6)
    # eager attention keeps its matmuls and score passes; a bf16 plan its old count (the points are fp32 timings)
    for other in (dict(attn=Attn.eager), dict(precision=Precision.bf16_mixed)):
        c = _cpu_cfg(model_path, **other)
        c_without = replace(c, cluster=replace(c.cluster, gpu=replace(c.cluster.gpu, sdpa_points=())))
        assert step_time(c).step_time_s == step_time(c_without).step_time_s


def test_cpu_optimizer_runs_torchs_cpu_default_the_single_tensor_loop(model_path) -> None:
    """On the CPU torch.optim.AdamW without foreach / fused runs its single-tensor loop (planner/torch_adamw.py): DDP's
    AdamW and clipping move 20 + 3 fp32 values per parameter at the loop's measured rate, plus its host work per
    tensor (LLAMA_16M: 6 layers x (7 linears + 2 norms), embedding, final norm, head: 57 tensors; LoRA on every
    linear: 6 x 7 x 2 = 84). GPUs run foreach at the memory bandwidth (no GPU entry carries a measured rate); the
    fused kernel on the CPU keeps the foreach rate, no per-tensor term."""
    cfg = _cpu_cfg(model_path)
    gpu = cfg.cluster.gpu
    counted = optimizer_bytes_per_param(Optimizer.adamw, Precision.fp32) + clip_bytes_per_param(Precision.fp32)
    assert counted == 92
    assert adamw_kernel(cfg) is AdamwKernel.single_tensor
    assert trainable_tensors(cfg.model, cfg.adapter, cfg.stage) == 57
    lora = _cpu_cfg(model_path, method=Method.lora)
    assert trainable_tensors(lora.model, lora.adapter, lora.stage) == 84
    params = (step_time(cfg).breakdown_s["optimizer"] - 57 * gpu.adamw_single_tensor_s) \
        * gpu.adamw_single_tensor_bytes_per_s / counted
    assert 16.0e6 < params < 17.5e6  # the benchmark model's 16.8M parameters
    fused = _cpu_cfg(model_path, fused_adamw=True)
    assert adamw_kernel(fused) is AdamwKernel.fused
    assert step_time(fused).breakdown_s["optimizer"] == pytest.approx(params * counted / gpu.optimizer_bytes_per_s)
    slow_loop = replace(gpu, adamw_single_tensor_s=2 * gpu.adamw_single_tensor_s)
    slower = replace(cfg, cluster=replace(cfg.cluster, gpu=slow_loop))
    assert step_time(slower).breakdown_s["optimizer"] == pytest.approx(
        step_time(cfg).breakdown_s["optimizer"] + 57 * gpu.adamw_single_tensor_s)
    assert all(g.optimizer_bytes_per_s is None and g.adamw_single_tensor_bytes_per_s is None and g.sdpa_points == ()
               for name, g in GPUS.items() if name != "CPU")
    on_gpu = build_config(model=model_path, gpus="2xH100", method=Method.full, precision=Precision.fp32, micro_batch=4,
                          seq_len=128)
    assert adamw_kernel(on_gpu) is AdamwKernel.foreach


def test_single_tensor_step_holds_its_largest_parameters_temporaries(model_path) -> None:
    """`_single_tensor_adam` holds sqrt(exp_avg_sq), its quotient and the previous parameter's denom: LLAMA_16M full,
    2 x its untied 8000 x 384 head + the 1024 x 384 down_proj before it in the Trainer's weight-decay group (the final
    norm is in the other group) in fp32; LoRA r 8, 3 x its widest tensor (8 x 1024: up's B before down's A). Measured
    with profiler.tracker (benchmarks/cpu_adamw_step.py measure, the worker's Trainer groups): 26,148,864 and 98,304
    bytes (with one group of every parameter 24,577,536: the final norm's denom before the head). A GPU plan keeps
    foreach's state-sized buffer."""
    from planner.torch_adamw import single_tensor_temporary_bytes

    full, lora = _cpu_cfg(model_path), _cpu_cfg(model_path, method=Method.lora)
    assert single_tensor_temporary_bytes(full, 4.0, 1) == (2 * 8000 + 1024) * 384 * 4 == 26_148_864
    assert single_tensor_temporary_bytes(lora, 4.0, 1) == 3 * 8 * 1024 * 4
    items = ddp.step_items(full, 16_765_824, 1, 8.0)
    assert items == {"AdamW single-tensor temporaries": (2 * 8000 + 1024) * 384 * 4}
    on_gpu = build_config(model=model_path, gpus="2xH100", method=Method.full, precision=Precision.fp32, micro_batch=4,
                          seq_len=128)
    assert ddp.step_items(on_gpu, 16_765_824, 1, 8.0) == {"AdamW foreach temporaries": 16_765_824 * 4}


def test_zero_on_the_cpu_steps_torchs_adamw_one_flat_partition_at_a_time(model_path) -> None:
    """ZeRO-1/2 step the client's torch AdamW over each group's flat fp32 partition (stage_1_and_2.py
    `_optimizer_step`); on the CPU its single-tensor loop holds 2 fp32 partitions of temporaries with the group's fp32
    gradient, a new partition (the flat copy; ZeRO-2's contiguous gradient partition stays beside it through the
    weight-decay group's step, held by the norms' group: tests/validation/test_memory_zero_adamw_step_measured.py).
    On a GPU the same client steps with foreach: one fp32 partition of temporaries (in bf16 beside
    a new fp32 gradient partition, above the conversion's flat 16-bit copy); --fused-adamw, none."""
    from planner.engines import zero

    trained = 16_765_824
    z2 = _cpu_cfg(model_path, zero=2)
    group = zero.step_group_elements(z2, trained, 2)
    assert zero.step_items(z2, trained, 2, 8.0) == {
        "ZeRO fp32 gradients + torch AdamW single-tensor temporaries, one group": group * 12.0}
    # ZeRO-1 with one micro-batch holds the partition as ZeRO-2 does (zero.zero1_holds_whole_grads); accumulating, it
    # holds whole gradients, of which the step keeps the partition
    assert zero.step_items(_cpu_cfg(model_path, zero=1), trained, 2, 8.0) == zero.step_items(z2, trained, 2, 8.0)
    z1 = _cpu_cfg(model_path, zero=1, grad_accum=2)
    assert zero.step_items(z1, trained, 2, 8.0) == {
        "ZeRO fp32 gradients + torch AdamW single-tensor temporaries, one group":
            group * 12.0 - 4.0 * (trained - trained / 2)}
    on_gpu = build_config(model=model_path, gpus="2xH100", method=Method.full, precision=Precision.bf16_mixed,
                          micro_batch=4, seq_len=128, zero=2)
    assert zero.step_items(on_gpu, trained, 2, 12.0) == {
        "ZeRO fp32 gradients + torch AdamW foreach temporaries, one group": group * 8.0}
    fused = replace(on_gpu, switches=replace(on_gpu.switches, fused_adamw=True))
    assert zero.step_items(fused, trained, 2, 12.0) == {"ZeRO fp32 gradients, one group (+ flat copy)": group * 6.0}


def test_device_fit_sets_attention_points_and_optimizer_rate() -> None:
    cpu = gpu_from_name("CPU")
    got = with_device_fit(cpu, {"sdpa_points": [list(p) for p in POINTS], "optimizer_bytes_per_s": 9e9,
                                "adamw_single_tensor_bytes_per_s": 1e10, "adamw_single_tensor_s": 4e-5})
    assert got.sdpa_points == POINTS and got.optimizer_bytes_per_s == 9e9
    assert single_tensor_bytes_per_s(got) == 1e10 and single_tensor_host_s(got) == 4e-5
    older = with_device_fit(cpu, {"host_op_s": 4e-6, "optimizer_bytes_per_s": 9e9})  # a file from before
    assert older.sdpa_points == cpu.sdpa_points
    # its single-tensor step from its own foreach rate and host op, by the measured ratios (not the catalog's figures)
    assert single_tensor_bytes_per_s(older) == pytest.approx(9e9 / SINGLE_OVER_FOREACH_TIME)
    assert single_tensor_host_s(older) == pytest.approx(SINGLE_TENSOR_HOST_OPS * 4e-6)
    assert single_tensor_bytes_per_s(cpu) == cpu.adamw_single_tensor_bytes_per_s


def test_cpu_lora_host_time_replaces_the_counted_ops(model_path) -> None:
    """With a measured host time per adapted linear the LoRA plan's framework time is the layers' base ops at
    host_op_s plus 6 layers x 7 adapted linears x that time (a recomputed forward one third more); without one, peft's
    8 ops per pass at host_op_s. Full plans and GPU entries carry none."""
    cfg = _cpu_cfg(model_path, method=Method.lora)
    gpu = cfg.cluster.gpu
    assert gpu.lora_linear_host_s is not None
    counted = replace(cfg, cluster=replace(cfg.cluster, gpu=replace(gpu, lora_linear_host_s=None)))
    added = step_time(cfg).breakdown_s["framework"] - step_time(counted).breakdown_s["framework"]
    assert added == pytest.approx(6 * 7 * (gpu.lora_linear_host_s - kn.OPS_PER_LORA_LINEAR * 3 * gpu.host_op_s))
    ckpt = _cpu_cfg(model_path, method=Method.lora, grad_ckpt="full")
    assert kn.lora_host_s(ckpt.model, 6, Method.lora, ckpt.lora_targets, ckpt.grad_ckpt, gpu) == pytest.approx(
        6 * 7 * gpu.lora_linear_host_s * 4 / 3)
    assert kn.lora_host_s(cfg.model, 6, Method.full, cfg.lora_targets, cfg.grad_ckpt, gpu) == 0.0
    assert all(g.lora_linear_host_s is None for name, g in GPUS.items() if name != "CPU")
    assert with_device_fit(gpu_from_name("CPU"), {"lora_linear_host_s": 1e-4}).lora_linear_host_s == 1e-4


def test_a_cuda_fit_sets_no_cpu_sdpa_points() -> None:
    """A CUDA device fit keeps its own attention timings under `attention_points` (profiler/device_fit_cuda.py,
    (b, heads, s, d, seconds)); the CPU kernel's points have a key of their own, so a GPU never takes the CPU path."""
    fit = {"device": "cuda", "gpu": "H100", "attention_efficiency": 0.4, "attention_points": [[4, 16, 2048, 128, 1e-3]]}
    got = with_device_fit(gpu_from_name("H100"), fit)
    assert got.sdpa_points == () and got.attention_efficiency == 0.4
