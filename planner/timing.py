"""The time model: one optimizer step's time on the slowest GPU, split into what it is spent on.

step_time = compute (incl. recompute) + pipeline bubble + QLoRA dequantization + tensor-parallel
communication + pipeline point-to-point + the exposed part of data-parallel communication + offload
(PCIe, CPU optimizer, NVMe) + the GPU optimizer step. The parts come from planner.compute,
planner.comm / planner.parallel_comm, planner.pipeline and planner.offload_time.

Overlap (PyTorch DDP, Li et al. 2020 "PyTorch Distributed", Sec. 3.2.3; DeepSpeed overlap_comm;
FSDP/ZeRO-3 prefetch): gradient reductions run bucket by bucket while backward continues, and
ZeRO-3/FSDP prefetch the next layer's parameters while the current one computes, so only what does not
fit under the compute of the same pass is exposed, and at least the last bucket always is.
Post-step all-gathers (ZeRO-1/2), the CPU optimizer and tensor-parallel all-reduces are not overlapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from planner import compute as cp
from planner import engines, moe
from planner import kernels as kn
from planner import memory_knobs as knobs
from planner import offload_time as off
from planner import parallel_comm as pc
from planner.calibration import DEFAULT, Calibration
from planner.comm import DEFAULT_COMM_EFFICIENCY
from planner.engines import parallel
from planner.errors import PlanError
from planner.gpus import GPUSpec
from planner.models import ModelSpec
from planner.pipeline import bubble_fraction
from planner.rl import timing as rl_timing
from planner.rl.settings import is_online_rl
from planner.states import param_counts, quant_bytes_per_param, stage_layers
from planner.strategy import (
    Adapter,
    Attn,
    CrossEntropy,
    Engine,
    GradCkpt,
    Kernels,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
    Stage,
    TrainConfig,
    ZeroStage,
)
from planner.torch_adamw import (
    AdamwKernel,
    adamw_kernel,
    single_tensor_bytes_per_s,
    single_tensor_host_s,
    trainable_tensors,
)

BREAKDOWN_KEYS = ("compute", "recompute", "pipeline_bubble", "dequantize", "tp_comm", "pp_comm", "dp_comm",
                  "ep_comm", "offload", "optimizer", "framework")


@dataclass(frozen=True, kw_only=True, slots=True)
class StepTime:
    """Seconds per optimizer step and its parts (keys `BREAKDOWN_KEYS`); rates are for the whole job."""

    step_time_s: float
    breakdown_s: dict[str, float]
    tokens_per_s: float
    samples_per_s: float
    mfu: float  # model FLOPs (no recompute) / (step time x GPUs x peak)
    hfu: float  # hardware FLOPs (with recompute) / (step time x GPUs x peak)
    model_flops_per_step: float
    dp_comm_total_s: float  # data-parallel communication before overlap


@dataclass(frozen=True, kw_only=True, slots=True)
class JobTime:
    steps: int
    time_s: float
    gpu_hours: float


@lru_cache(maxsize=4096)
def _flops(m: ModelSpec, tr: cp.Training, tp: int, pp: int) -> tuple[float, float, float]:
    """Per token: (hardware FLOPs on the most loaded GPU, model FLOPs of the whole model, recompute FLOPs
    on that GPU). The last pipeline stage holds ceil(L/p) layers and the LM head; TP splits it t ways."""
    layers = stage_layers(m.num_layers, pp)
    gpu = cp.flops_per_token(m, tr, layers=layers, head=True)
    job = cp.flops_per_token(m, tr)
    return gpu.hardware / tp, job.model, (gpu.hardware - gpu.model) / tp


# Values each torch optimizer reads plus writes per parameter in one step. torch.optim.AdamW's default on a GPU,
# the multi-tensor path (torch/optim/adam.py `_multi_tensor_adam`, decoupled weight decay; the Trainer's
# `adamw_torch`, ftplan's runner and profiler), is eight separate foreach kernels (on the CPU torch's default runs
# the same eight passes one tensor at a time, `_single_tensor_adam`: planner/torch_adamw.py): param *= 1 - lr*wd
# (r1 w1), exp_avg.lerp_(grad) (r2 w1), exp_avg_sq *= beta2 (r1 w1), addcmul_(grad, grad) (r2 w1),
# denom = sqrt(exp_avg_sq) (r1 w1), denom /= bias_correction2 (r1 w1), denom += eps (r1 w1),
# param.addcdiv_(exp_avg, denom) (r3 w1): 12 reads + 8 writes. SGD with momentum (`_multi_tensor_sgd`):
# buf *= momentum, buf += grad, param -= lr * buf: 5 reads + 3 writes.
TORCH_ADAMW_VALUES = 20
TORCH_SGD_VALUES = 8


def optimizer_bytes_per_param(optimizer: Optimizer, precision: Precision) -> float:
    """Memory bytes one optimizer step reads and writes per parameter: a memory-bound elementwise pass.
    torch AdamW / SGD: the foreach kernels above, on the parameter's dtype. bitsandbytes' optimizers
    (8-bit blockwise and the paged 32-bit AdamW) are one fused kernel per tensor
    (bitsandbytes/optim/optimizer.py -> `optimizer_update_32bit` / `optimizer_update_8bit_blockwise`):
    read param, grad and the two states, write param and states (8-bit states: 1 byte each). Under
    mixed precision with 16-bit model weights (DeepSpeed) the fp32 master also writes the 16-bit copy."""
    p = 2.0 if precision is Precision.bf16_true else 4.0
    copy16 = 2.0 if precision in (Precision.bf16_mixed, Precision.fp16_mixed) else 0.0
    if optimizer is Optimizer.adamw:
        return TORCH_ADAMW_VALUES * p + copy16
    if optimizer is Optimizer.sgd:
        return TORCH_SGD_VALUES * p + copy16
    state = 1.0 if optimizer in (Optimizer.adamw_8bit, Optimizer.paged_adamw_8bit) else 4.0
    return 2 * p + p + 2 * 2 * state + copy16


def clip_bytes_per_param(precision: Precision) -> float:
    """Gradient clipping, every step, on every engine: the Trainer clips at max_grad_norm 1.0 by default
    (transformers TrainingArguments; accelerate's clip_grad_norm_ -> torch/nn/utils/clip_grad.py: a foreach norm that
    reads each gradient, then `_foreach_mul_` by the clamped coefficient, always), and DeepSpeed at its
    gradient_clipping, which the emitted config sets to the same (stage_1_and_2.py / stage3.py: the partition's norm,
    then `unscale_and_clip_grads`: `mul_` always): one read and one read + write of each gradient on the rank."""
    return 3.0 * (2.0 if precision is Precision.bf16_true else 4.0)


@dataclass(frozen=True, slots=True)
class _Family:
    """What a step's time needs that does not depend on batch shape or engine: FLOPs per token and
    parameter bytes per GPU, for one model / method / parallel layout / precision."""

    gpu_flops_tok: float
    model_flops_tok: float
    hardware_flops_tok: float
    recompute_tok: float
    trainable_gpu: float
    param_bytes_gpu: float
    stage_layers: int
    peak: float


@lru_cache(maxsize=4096)
def _family_of(m: ModelSpec, gpu: GPUSpec, adapter: Adapter, grad_ckpt: GradCkpt, seq_len: int, stage: Stage,
               tp: int, pp: int, precision: Precision, doc_len: int = 0, doc_kernel: bool = False) -> _Family:
    tr = cp.Training(method=adapter.method, lora_r=adapter.lora_r, lora_targets=adapter.lora_targets,
                     freeze_layers=adapter.freeze_layers, grad_ckpt=grad_ckpt, seq_len=seq_len, stage=stage,
                     doc_len=doc_len, doc_kernel=doc_kernel)
    gpu_tok, model_tok, recompute_tok = _flops(m, tr, tp, pp)
    counts = param_counts(m, adapter, stage)
    total_p, trainable_p, quant_p = float(counts.total), float(counts.trainable), float(counts.quantized)
    split = tp * pp
    w_bytes = 4.0 if precision is Precision.fp32 else 2.0
    q_bytes = quant_bytes_per_param(adapter.quant, adapter.double_quant)
    return _Family(gpu_flops_tok=gpu_tok, model_flops_tok=model_tok,
                   hardware_flops_tok=cp.flops_per_token(m, tr).hardware, recompute_tok=recompute_tok,
                   trainable_gpu=trainable_p / split,
                   param_bytes_gpu=((total_p - quant_p) * w_bytes + quant_p * q_bytes) / split,
                   stage_layers=stage_layers(m.num_layers, pp), peak=cp.peak_flops_per_s(gpu, precision))


def _family(cfg: TrainConfig) -> _Family:
    return _family_of(cfg.model, cfg.cluster.gpu, cfg.adapter, cfg.grad_ckpt, cfg.seq_len, cfg.stage, cfg.tp, cfg.pp,
                      cfg.precision, cfg.doc_len or 0, cp.document_kernel(cfg))


def step_time(cfg: TrainConfig, cal: Calibration = DEFAULT, attention_kernel: str | None = None) -> StepTime:
    """Seconds per optimizer step on the slowest GPU (the last pipeline stage), with its breakdown. The online RL
    stages add generation, scoring and the weight sync to the policy's training step (planner.rl.timing).
    `attention_kernel` names the SCORE_PASSES kernel eager attention runs where it is not transformers' own
    (planner/kernels.py): "sdpa_math" for a run whose modeling code hands SDPA inputs its fused kernels refuse,
    so that SDPA falls back to its math kernel (no choice a user makes: the validation cases name it)."""
    if is_online_rl(cfg.stage):
        return rl_timing.rl_step_time(_TRAINING, cfg, cal)
    return training_step_time(cfg, cal, attention_kernel)


def training_step_time(cfg: TrainConfig, cal: Calibration = DEFAULT, attention_kernel: str | None = None) -> StepTime:
    """Seconds per optimizer step of the training alone (forward, backward, communication, optimizer)."""
    cluster = cfg.cluster
    gpu = cluster.gpu
    tp, pp, mb, ga = cfg.tp, cfg.pp, cfg.micro_batch, cfg.grad_accum
    dp = cluster.nodes * cluster.gpus_per_node // (tp * pp)
    global_batch = mb * ga * dp
    s = cfg.seq_len
    fam = _family(cfg)
    eff = cp.compute_efficiency(gpu.name, cal.compute_efficiency, gpu.gemm_efficiency)
    comm_eff = cal.comm_efficiency if cal.comm_efficiency is not None else DEFAULT_COMM_EFFICIENCY
    sample_tokens = cp.tokens_per_sample(cfg)
    mb_tokens = mb * sample_tokens
    mb_compute_s, mb_recompute_s = _micro_batch_compute_s(cfg, fam, mb_tokens, eff, attention_kernel)
    compute_s = ga * (mb_compute_s - mb_recompute_s)
    recompute_s = ga * mb_recompute_s
    dispatch_s, hooks_s = _host_exposed_s(cfg, fam.stage_layers, mb_compute_s)
    # forward : backward split of one micro-batch, for the overlap windows (full: 1 : 2, frozen: 1 : 1)
    fwd_share = 1 / 3 if cfg.method is Method.full else 1 / 2
    fwd_s = (mb_compute_s - mb_recompute_s) * fwd_share
    bwd_s = mb_compute_s - fwd_s
    if gpu.sm_count > 0:
        # a host-bound micro-batch lasts as long as the host's launches, not the device's busy time (the device waits
        # on them: _host_exposed_s), and the collectives and copies on their own streams run through that wall time:
        # DDP's bucket all-reduces and ZeRO's reductions start from the autograd hooks as backward proceeds (Li et
        # al. 2020 Sec. 3.2.3), so backward's window is the micro-batch's wall time less forward's. Forward keeps the
        # device's time, so the windows sum to the wall time and grow only as it does
        bwd_s += dispatch_s

    bubble_s = (compute_s + recompute_s) * bubble_fraction(pp, ga, cfg.pp_schedule, cfg.virtual_stages)
    dequant_s = ga * cp.dequant_bytes_per_micro_batch(cfg) / (gpu.hbm_bytes_per_s * cp.BNB_DEQUANT_BANDWIDTH_FRACTION) \
        if cfg.quant is not Quant.none else 0.0

    tp_s = parallel.tp_comm_s(cfg, stage_layers=fam.stage_layers, comm_eff=comm_eff)
    pp_s = parallel.pp_comm_s(cfg, comm_eff=comm_eff)

    # expert parallelism: the experts' FSDP traffic runs over dp / ep ranks with 1/ep of them (planner/moe.py)
    share = moe.ep_gradient_share(cfg)
    dp_total, dp_exposed, offload_s = _data_parallel(cfg, dp, fam.trainable_gpu * share, fam.param_bytes_gpu * share,
                                                     fwd_s, bwd_s, comm_eff)
    ep_s = ga * moe.ep_comm_s(cfg, tokens=mb_tokens, layers=fam.stage_layers, comm_eff=comm_eff)
    reduce_s = _reduce_chain_s(cfg, dp, fam.trainable_gpu * share, fam.param_bytes_gpu * share, comm_eff)
    offload_total, opt_s = _offload_and_optimizer(cfg, dp, fam.trainable_gpu, bwd_s, reduce_s)
    offload_s += offload_total + ga * knobs.activation_offload_exposed_s(cfg, fwd_s, bwd_s)

    # hooks that wait on in-flight gathers (ZeRO-3, FSDP with more than one rank) run while those gathers are
    # exposed: the device idles for the longer of the two, not for both
    framework_s = ga * dispatch_s + (max(0.0, ga * hooks_s - dp_exposed) if gpu.sm_count > 0 and dp > 1
                                     else ga * hooks_s)
    parts = {"compute": compute_s, "recompute": recompute_s, "pipeline_bubble": bubble_s, "dequantize": dequant_s,
             "tp_comm": tp_s, "pp_comm": pp_s, "dp_comm": dp_exposed, "ep_comm": ep_s, "offload": offload_s,
             "optimizer": opt_s,
             "framework": framework_s}
    step_s = sum(parts.values())
    job_tokens = global_batch * sample_tokens
    peak_job = step_s * cluster.nodes * cluster.gpus_per_node * fam.peak
    return StepTime(step_time_s=step_s, breakdown_s=parts, tokens_per_s=global_batch * s / step_s,
                    samples_per_s=global_batch / step_s, mfu=fam.model_flops_tok * job_tokens / peak_job,
                    hfu=fam.hardware_flops_tok * job_tokens / peak_job,
                    model_flops_per_step=fam.model_flops_tok * job_tokens, dp_comm_total_s=dp_total)


# what planner.rl.timing builds the online RL stages' step from (it cannot import this module: this one imports it)
_TRAINING = rl_timing.TrainingTime(step=training_step_time, step_time=StepTime)


def _elem_bytes(cfg: TrainConfig) -> float:
    return 4.0 if cfg.precision is Precision.fp32 else 2.0


# The search times every engine, ZeRO stage, offload and optimizer of a layout and batch shape: the device time of a
# micro-batch reads none of them. Its key is every config field it reads (the model, GPU, adapter, layout, precision,
# sequence, attention, switches (fused kernels, the loss), stage, checkpointing) and the arguments;
# tests/planner/test_search_exact.py checks it against a fresh computation for every candidate of several searches.
_MICRO_BATCH_S: dict[tuple, tuple[float, float]] = {}


def _micro_batch_compute_s(cfg: TrainConfig, fam: _Family, tokens: int, eff: float,
                           attention_kernel: str | None = None) -> tuple[float, float]:
    key = (cfg.model, cfg.cluster.gpu, cfg.adapter, cfg.layout, cfg.precision, cfg.seq_len, cfg.attn, cfg.switches,
           cfg.stage, cfg.grad_ckpt, fam, tokens, eff, attention_kernel)
    hit = _MICRO_BATCH_S.get(key)
    if hit is None:
        if len(_MICRO_BATCH_S) >= 8192:
            _MICRO_BATCH_S.clear()
        hit = _MICRO_BATCH_S[key] = _device_time_s(cfg, fam, tokens, eff, attention_kernel)
    return hit


def _device_time_s(cfg: TrainConfig, fam: _Family, tokens: int, eff: float,
                   attention_kernel: str | None = None) -> tuple[float, float]:
    """(device time incl. recompute, recompute) seconds of one micro-batch, pass by pass (planner/kernels.py):
    each linear's GEMMs on the roofline at the GPU's large-GEMM efficiency (wave quantization; the CPU's measured
    GEMM curve), the attention core (FlashAttention-2's causal blocks at the GPU's attention efficiency, or the
    full s x s matmuls at the GEMM rate where no attention figure exists or attention is eager), the elementwise
    ops' bytes at the memory bandwidth, eager attention's score traffic and LoRA's branch. A calibrated
    efficiency scales the whole device time. Forward runs once (plus DPO's reference forward), backward once,
    full checkpointing repeats the forward (selective: the attention core)."""
    m, gpu = cfg.model, cfg.cluster.gpu
    default_eff = cp.compute_efficiency(gpu.name, fitted=gpu.gemm_efficiency)
    scale = default_eff / eff  # a calibration file's efficiency scales every device term alike
    # sequences of seq_len each: DPO and RM stack the chosen and rejected answers into the batch
    seqs = max(1, tokens // cfg.seq_len)
    fwd, bwd, head_fwd, head_bwd, attn_fwd, _ = _pass_times(
        m, gpu, tokens, cfg.adapter, cfg.freeze_layers, cfg.tp, cfg.precision, fam.peak, default_eff, seqs,
        cfg.seq_len, cfg.attn, _fused(cfg), cfg.stage, cfg.ep, cfg.doc_len or 0)
    layers = fam.stage_layers
    if attention_kernel is not None and cfg.attn is not Attn.eager:
        raise ValueError(f"attention kernel {attention_kernel} materializes the scores: plan it with eager attention")
    kernel = attention_kernel or kn.attention_kernel(cfg.attn, cfg.torch_compile)
    dtype = kn.score_dtype(_elem_bytes(cfg), cfg.precision is Precision.fp16_mixed, gpu.sm_count > 0)
    scores_fwd, scores_bwd = kn.attention_memory_s(m, kernel, dtype, seqs, cfg.seq_len, layers, cfg.tp,
                                                   _elem_bytes(cfg), gpu)
    extra = scores_fwd + scores_bwd + (layers * _lora_branch_s(cfg, tokens) if cfg.method is not Method.full else 0.0)
    trained, forward_only = _model_passes(cfg.stage)
    loss = _loss_s(cfg, tokens) if cfg.stage is not Stage.rm else 0.0
    train_s = layers * (fwd + bwd) + head_fwd + head_bwd + loss + extra
    ref_s = layers * fwd + head_fwd  # a frozen model's forward
    # a checkpointed layer runs its whole forward again in backward (torch/utils/checkpoint.py reruns the wrapped
    # function): with it peft's LoRA branch (lora.Linear.forward: the casts, the dropout, the scaling and the add)
    # and a score-materializing kernel's forward passes; selective checkpointing reruns the attention core only
    recompute = 0.0
    if cfg.grad_ckpt is GradCkpt.full:
        recompute = layers * fwd + scores_fwd + (layers * _lora_branch_s(cfg, tokens, forward_only=True)
                                                if cfg.method is not Method.full else 0.0)
    elif cfg.grad_ckpt is GradCkpt.selective:
        recompute = layers * attn_fwd + scores_fwd
    total = trained * (train_s + recompute) + forward_only * ref_s
    return scale * total, scale * trained * recompute


def _model_passes(stage: Stage) -> tuple[int, int]:
    """(models trained, extra frozen forwards) per micro-batch: DPO's reference forward. PPO's actor and critic are
    two training steps of their own (planner.rl.timing.rl_step_time)."""
    if stage is Stage.dpo:
        return 1, 1
    return 1, 0


def _fused(cfg: TrainConfig) -> bool:
    """Elementwise ops run as fused kernels: Liger's (RMSNorm, RoPE, SwiGLU) or Inductor's (torch.compile)."""
    return cfg.kernels is not Kernels.eager or cfg.torch_compile


def _loss_s(cfg: TrainConfig, tokens: int) -> float:
    gpu = cfg.cluster.gpu
    v = max(1, cfg.model.vocab_size // cfg.tp)
    fused = cfg.cross_entropy is CrossEntropy.fused
    return tokens * kn.loss_elementwise_bytes(v, _elem_bytes(cfg), fused) / gpu.elementwise_bytes_per_s


@lru_cache(maxsize=4096)
def _pass_times(m: ModelSpec, gpu: GPUSpec, tokens: int, adapter: Adapter, freeze_layers: int, tp: int,
                precision: Precision, peak: float, eff: float, b: int, s: int, attn: Attn, fused: bool,
                stage: Stage, ep: int = 1, doc_len: int = 0) -> tuple[float, float, float, float, float, float]:
    """Seconds of one (mean) decoder layer's forward and backward, the head's forward and backward, and one layer's
    attention core forward and backward (part of the layer's), for a micro-batch of `tokens` = b x s tokens. Each
    linear's GEMMs count its active experts, its share of the layers (DeepSeek-V3's dense-first layers), whether
    its experts run as one grouped GEMM, and their expert-parallel split (planner/kernels.py layer_gemms,
    planner/moe.py); attention follows each layer kind's heads and window, and FlashAttention-2 the packed
    documents of `doc_len` tokens (planner/kernels.py document_block_share). The matmul path below (eager, fp32, a
    device without a measured attention kernel: FlashAttention-2 runs on none of them, and on the CPU
    runner/model.py loads SDPA for it) computes the whole s x s whatever the documents."""
    full = adapter.method is Method.full
    elem = 4.0 if precision is Precision.fp32 else 2.0
    fwd_g, bwd_g = kn.layer_gemms(m, tokens, adapter.method, adapter.lora_r, adapter.lora_targets, full, tp, ep)
    fwd = sum(kn.gemm_time_s(g, gpu, peak, eff, elem) for g in fwd_g)
    bwd = sum(kn.gemm_time_s(g, gpu, peak, eff, elem) for g in bwd_g)
    if full and freeze_layers:
        # frozen layers skip their weight gradients: the share of layers that train keeps them
        _, frozen_bwd = kn.layer_gemms(m, tokens, adapter.method, adapter.lora_r, adapter.lora_targets, False, tp, ep)
        share = 1.0 - min(freeze_layers, m.num_layers) / m.num_layers
        bwd = share * bwd + (1.0 - share) * sum(kn.gemm_time_s(g, gpu, peak, eff, elem) for g in frozen_bwd)
    # FlashAttention-2 runs 16-bit inputs only; fp32 SDPA falls back to its math / memory-efficient kernels
    if gpu.attention_efficiency is not None and attn is not Attn.eager and precision is not Precision.fp32:
        attn_fwd, attn_bwd = kn.flash_attention_s(m, b, s, tp, gpu, peak, gpu.attention_efficiency, attn, doc_len)
    elif gpu.sdpa_points and attn is not Attn.eager and precision is Precision.fp32:
        # SDPA's CPU flash kernel at its measured time per computed score element (the points are fp32 timings)
        attn_fwd, attn_bwd = kn.cpu_sdpa_attention_s(m, b, s, tp, gpu, doc_len)
    else:
        # the full s x s matmuls (eager, or a device without a measured attention kernel) at the GEMM rate
        flops = tokens * cp.attention_flops(m, s) / tp
        attn_fwd = sum(kn.gemm_time_s(g, gpu, peak, eff, elem) for g in kn.attention_matmuls(m, b, s, tp)) \
            if gpu.sm_count > 0 else cp.compute_time_s(flops, peak, eff)
        attn_bwd = 2.0 * attn_fwd
    elementwise = tokens * kn.layer_elementwise_bytes(m, elem, fused, tp) / gpu.elementwise_bytes_per_s
    fwd += attn_fwd + elementwise
    bwd += attn_bwd + kn.ELEMENTWISE_BACKWARD_OVER_FORWARD * elementwise
    head_fwd = head_bwd = 0.0
    if stage is not Stage.rm:
        v = max(1, m.vocab_size // tp)
        head_fwd = kn.gemm_time_s(kn.Gemm(tokens, m.hidden_size, v), gpu, peak, eff, elem)
        head_bwd = kn.gemm_time_s(kn.Gemm(tokens, v, m.hidden_size), gpu, peak, eff, elem)
        if full and not (m.tie_embeddings and freeze_layers):
            head_bwd += kn.gemm_time_s(kn.Gemm(m.hidden_size, tokens, v), gpu, peak, eff, elem)
    return fwd, bwd, head_fwd, head_bwd, attn_fwd, attn_bwd


def _lora_branch_s(cfg: TrainConfig, tokens: int, forward_only: bool = False) -> float:
    """Per layer and micro-batch: the LoRA branch's elementwise traffic, and where the device's dropout is
    measured (the CPU's RNG) its dropouts' forwards at that rate instead of their traffic, and their backward
    mask multiplies as traffic (planner/kernels.py lora_elementwise_bytes, `rng_measured`);
    `forward_only`: the forward's share, which a recomputed forward runs again (dropout redraws its masks)."""
    gpu = cfg.cluster.gpu
    rng = gpu.dropout_values_per_s if cfg.lora_dropout > 0 else None
    mixed = cfg.precision in (Precision.bf16_mixed, Precision.fp16_mixed)
    traffic = kn.lora_elementwise_bytes(cfg.model, tokens, cfg.lora_targets, cfg.tp, _elem_bytes(cfg),
                                        dropout=cfg.lora_dropout > 0 and rng is None,
                                        fp32_adapters=mixed, forward_only=forward_only,
                                        compiled=cfg.torch_compile, rng_measured=rng is not None) / \
        gpu.elementwise_bytes_per_s
    return traffic + (kn.lora_dropout_values(cfg.model, tokens, cfg.lora_targets) / rng if rng else 0.0)


def _host_exposed_s(cfg: TrainConfig, layers: int, mb_compute_s: float) -> tuple[float, float]:
    """Host time of one micro-batch not hidden behind the device, as (eager dispatch, framework hooks): the eager
    ops' dispatch (planner/kernels.py; a MoE layer's routing and, without a grouped kernel, its per-expert loop:
    planner/moe.py) and the framework's hooks (ZeRO-3 per module, FSDP per unit:
    planner/collectives.py). On a GPU the host enqueues kernels asynchronously and runs ahead of the device
    (PyTorch "CUDA semantics: asynchronous execution"), so only a host-bound micro-batch pays the excess; on the
    CPU host and device are one."""
    gpu = cfg.cluster.gpu
    passes = 3 + (1 if cfg.grad_ckpt is GradCkpt.full else 0)
    measured_lora = bool(gpu.lora_linear_host_s)
    ops = kn.host_ops_per_micro_batch(cfg.model, layers, cfg.method, cfg.lora_targets, cfg.grad_ckpt,
                                      lora_ops=not measured_lora) + \
        moe.moe_host_ops_per_micro_batch(cfg.model, gpu, layers, passes)
    dispatch_s = ops * gpu.host_op_s + kn.lora_host_s(cfg.model, layers, cfg.method, cfg.lora_targets, cfg.grad_ckpt,
                                                      gpu)
    hooks_s = engines.of(cfg).hook_host_s(cfg, layers)
    if gpu.sm_count <= 0:
        return dispatch_s, hooks_s
    if hooks_s > 0 and cfg.dp > 1:
        # with gathers in flight the hooks wait on them: DeepSpeed's fetch_sub_module synchronizes on its ongoing
        # fetch events (partitioned_param_coordinator.py, __ongoing_fetch_events), FSDP's rate limiter on its
        # all-gather events (limit_all_gathers), so the device idles while the host runs them ("the idle time
        # between layers was caused by the overhead associated with handling hooks", deepspeedai/DeepSpeed#5047)
        return max(0.0, dispatch_s - mb_compute_s), hooks_s
    return max(0.0, dispatch_s + hooks_s - mb_compute_s), 0.0


def _data_parallel(cfg: TrainConfig, dp: int, trainable_gpu: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
                   comm_eff: float) -> tuple[float, float, float]:
    """(total, exposed) data-parallel communication per step, and host-link time of parameter offload that
    rides on the gathers: the engine's (planner/engines/)."""
    if dp <= 1 and cfg.offload is not Offload.all:
        return 0.0, 0.0, 0.0
    g = pc.dp_group(cfg.cluster, cfg.tp, cfg.pp, dp, comm_eff)
    if dp <= 1:
        # one rank gathers nothing, but its offloaded parameters still cross the host link before each use: DeepSpeed
        # ZeRO-3 copies the CPU partition to the GPU before its (one-rank) all-gather (partition_parameters.py
        # `_all_gather` of ds_tensor), FSDP's CPU offload moves the shard to the GPU before unsharding (FSDP2
        # fsdp_param.py `all_gather_inputs`: `.to(self.device, non_blocking=True)`; FSDP1 flat_param.py
        # `pre_unshard`: `flat_param_to(self.device)`, NO_SHARD included)
        return 0.0, 0.0, engines.of(cfg).dp_comm(cfg, g, trainable_gpu, param_bytes_gpu, fwd_s, bwd_s, comm_eff)[2]
    return engines.of(cfg).dp_comm(cfg, g, trainable_gpu, param_bytes_gpu, fwd_s, bwd_s, comm_eff)


def _reduce_chain_s(cfg: TrainConfig, dp: int, trainable_gpu: float, param_bytes_gpu: float, comm_eff: float) -> float:
    """Seconds per gradient reduction of the traffic an offloaded gradient's copy to the host waits behind on its
    stream (the engine's reduce_chain_s); 0 without offload or data parallelism."""
    if dp <= 1 or cfg.offload is Offload.none:
        return 0.0
    g = pc.dp_group(cfg.cluster, cfg.tp, cfg.pp, dp, comm_eff)
    return engines.of(cfg).reduce_chain_s(cfg, g, trainable_gpu, param_bytes_gpu)


def _offload_and_optimizer(cfg: TrainConfig, dp: int, trainable_gpu: float, bwd_s: float,
                           reduce_s: float = 0.0) -> tuple[float, float]:
    """(offload seconds, GPU optimizer seconds) per step. `reduce_s`: the reduction the gradients' copies follow on
    their stream (_reduce_chain_s), in every micro-batch that reduces; the copies overlap only the backward it
    leaves."""
    gpu, eng = cfg.cluster.gpu, engines.of(cfg)
    n = eng.optimizer_shards(cfg)
    params_rank = trainable_gpu / n
    if cfg.offload is Offload.none:
        per_param = optimizer_bytes_per_param(cfg.optimizer, cfg.precision) + clip_bytes_per_param(cfg.precision)
        if cfg.engine is Engine.deepspeed and cfg.precision is Precision.fp32:
            # DeepSpeed keeps an fp32 partition apart from the model's flat weights even in fp32 and copies it back
            # after the step (stage_1_and_2.py step: `bit16_partitions[partition_id].data.copy_(...)`; stage3.py
            # likewise): a read and a write, where mixed precision's 16-bit write is in optimizer_bytes_per_param
            per_param += 8.0
        if adamw_kernel(cfg) is AdamwKernel.single_tensor:
            # torch's CPU default, a for-loop over the parameter tensors (planner/torch_adamw.py): the same bytes at
            # the loop's measured rate, plus its host work per tensor (every rank holds every tensor, FSDP's shards)
            tensors = trainable_tensors(cfg.model, cfg.adapter, cfg.stage)
            return 0.0, params_rank * per_param / single_tensor_bytes_per_s(gpu) + tensors * single_tensor_host_s(gpu)
        # at the rate the device fit measured for this step where it has one (the CPU), else the memory bandwidth
        return 0.0, params_rank * per_param / (gpu.optimizer_bytes_per_s or gpu.hbm_bytes_per_s)
    ranks = cfg.cluster.gpus_per_node
    link = gpu.host_link_bytes_per_s
    # gradients to the host, overlapped with backward; updated 16-bit weights back once per step. ZeRO-1/2
    # (deepspeed/runtime/zero/stage_1_and_2.py copy_grads_in_partition): with accumulation every micro-batch
    # brings the partition's accumulated 16-bit gradients back from the host, adds its own on the GPU and copies
    # them out again (async_accumulate_grad_in_cpu_via_gpu: 2 x 16-bit per micro-batch), and the boundary copies
    # them out as fp32 (async_inplace_copy_grad_to_fp32_buffer_from_gpu); ZeRO-3 moves fp32 gradients
    # every micro-batch, FSDP in the micro-batches that reduce (the last one under the Trainer's no_sync)
    d2h_count = eng.gradient_offloads_per_step(cfg)
    # the boundary micro-batch always reduces; the others too where each micro-batch offloads (ZeRO-2/3, FSDP that
    # syncs each micro-batch)
    left_s = max(0.0, bwd_s - reduce_s)
    other_s = left_s if d2h_count == cfg.grad_accum else bwd_s
    if cfg.engine is Engine.deepspeed and cfg.zero in (ZeroStage.OPTIMIZER_STATES, ZeroStage.GRADIENTS) and \
            cfg.grad_accum > 1:
        # the boundary micro-batch runs both in its one backward, one after the other (copy_grads_in_partition:
        # the accumulation, then async_inplace_copy_grad_to_fp32_buffer_from_gpu when is_gradient_accumulation_boundary)
        d2h_each = off.pcie_time_s(params_rank * 2.0 * _elem_bytes(cfg), link)
        d2h_exposed = (cfg.grad_accum - 1) * max(0.0, d2h_each - other_s) + \
            max(0.0, d2h_each + off.pcie_time_s(params_rank * 4.0, link) - left_s)
    else:
        d2h_each = off.pcie_time_s(params_rank * 4.0, link)
        d2h_exposed = d2h_count * max(0.0, d2h_each - left_s)
    h2d = off.pcie_time_s(params_rank * 2.0, link) if cfg.offload is Offload.optimizer else 0.0
    adam = off.cpu_adam_time_s(params_rank, ranks, deepspeed_cpu_adam=cfg.engine is Engine.deepspeed)
    nvme = 0.0
    if cfg.offload_device is OffloadDevice.nvme:
        # ZeRO-Infinity streams the optimizer states in and out of NVMe every step
        nvme = off.nvme_time_s(2 * off.ADAM_STATE_BYTES * params_rank, ranks)
    return d2h_exposed + h2d + adam + nvme, 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSize:
    """How much to train: `samples` sequences per epoch (or `tokens`, packed into `seq_len` sequences)."""

    tokens: float | None = None
    samples: float | None = None
    epochs: float = 1.0


def job_size(tokens: float | None, samples: float | None, epochs: float = 1.0) -> JobSize | None:
    """Check a job size from the CLI; None when neither --tokens nor --samples is given."""
    if tokens is not None and samples is not None:
        raise PlanError("give --tokens or --samples, not both")
    if not epochs > 0:
        raise PlanError(f"--epochs must be positive, got {epochs:g}")
    for name, value in (("--tokens", tokens), ("--samples", samples)):
        if value is not None and not value > 0:
            raise PlanError(f"{name} must be positive, got {value:g}")
    if tokens is None and samples is None:
        return None
    return JobSize(tokens=tokens, samples=samples, epochs=epochs)


def job_time(step: StepTime, cfg: TrainConfig, size: JobSize) -> JobTime:
    """Steps, wall time and GPU-hours for `size.epochs` passes over the job's sequences."""
    samples = size.samples if size.samples is not None else (size.tokens or 0.0) / cfg.seq_len
    steps = max(1, math.ceil(samples * size.epochs / cfg.global_batch))
    time_s = steps * step.step_time_s
    return JobTime(steps=steps, time_s=time_s, gpu_hours=time_s * cfg.world_size / 3600)


def job_to_dict(job: JobTime) -> dict[str, float | int]:
    return {"steps": job.steps, "time_s": job.time_s, "gpu_hours": job.gpu_hours}
