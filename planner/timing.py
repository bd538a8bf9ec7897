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
from functools import cache, lru_cache

from planner import compute as cp
from planner import engines
from planner import memory_knobs as knobs
from planner import offload_time as off
from planner import parallel_comm as pc
from planner.calibration import DEFAULT, Calibration
from planner.comm import DEFAULT_COMM_EFFICIENCY
from planner.errors import PlanError
from planner.gpus import GPUSpec
from planner.models import ModelSpec
from planner.pipeline import boundary_activation_bytes, bubble_fraction, p2p_messages_per_step
from planner.states import param_counts, quant_bytes_per_param, stage_layers
from planner.strategy import (
    Adapter,
    Engine,
    GradCkpt,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
    Stage,
    TrainConfig,
)

BREAKDOWN_KEYS = ("compute", "recompute", "pipeline_bubble", "dequantize", "tp_comm", "pp_comm", "dp_comm",
                  "offload", "optimizer")


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


@cache
def _flops(m: ModelSpec, tr: cp.Training, tp: int, pp: int) -> tuple[float, float, float]:
    """Per token: (hardware FLOPs on the most loaded GPU, model FLOPs of the whole model, recompute FLOPs
    on that GPU). The last pipeline stage holds ceil(L/p) layers and the LM head; TP splits it t ways."""
    layers = stage_layers(m.num_layers, pp)
    gpu = cp.flops_per_token(m, tr, layers=layers, head=True)
    job = cp.flops_per_token(m, tr)
    return gpu.hardware / tp, job.model, (gpu.hardware - gpu.model) / tp


def optimizer_bytes_per_param(optimizer: Optimizer, precision: Precision) -> float:
    """HBM bytes an AdamW step reads and writes per parameter: a memory-bound elementwise kernel
    (torch's fused/foreach AdamW, torch/optim/adamw.py): read param, grad, m, v; write param, m, v; under
    mixed precision the fp32 master also writes the 16-bit copy. 8-bit states: 1 byte each (+ absmax)."""
    p = 2.0 if precision is Precision.bf16_true else 4.0
    state = 1.0 if optimizer in (Optimizer.adamw_8bit, Optimizer.paged_adamw_8bit) else p
    n_states = 1 if optimizer is Optimizer.sgd else 2
    copy16 = 2.0 if precision in (Precision.bf16_mixed, Precision.fp16_mixed) else 0.0
    return 2 * p + p + 2 * n_states * state + copy16


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
               tp: int, pp: int, precision: Precision) -> _Family:
    tr = cp.Training(method=adapter.method, lora_r=adapter.lora_r, lora_targets=adapter.lora_targets,
                     freeze_layers=adapter.freeze_layers, grad_ckpt=grad_ckpt, seq_len=seq_len, stage=stage)
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
                      cfg.precision)


def step_time(cfg: TrainConfig, cal: Calibration = DEFAULT) -> StepTime:
    """Seconds per optimizer step on the slowest GPU (the last pipeline stage), with its breakdown."""
    m, cluster = cfg.model, cfg.cluster
    gpu = cluster.gpu
    tp, pp, mb, ga = cfg.tp, cfg.pp, cfg.micro_batch, cfg.grad_accum
    dp = cluster.nodes * cluster.gpus_per_node // (tp * pp)
    global_batch = mb * ga * dp
    s = cfg.seq_len
    fam = _family(cfg)
    eff = cp.compute_efficiency(gpu.name, cal.compute_efficiency)
    comm_eff = cal.comm_efficiency if cal.comm_efficiency is not None else DEFAULT_COMM_EFFICIENCY
    sample_tokens = cp.tokens_per_sample(cfg)
    mb_tokens = mb * sample_tokens
    mb_compute_s = cp.compute_time_s(fam.gpu_flops_tok * mb_tokens, fam.peak, eff)
    mb_recompute_s = cp.compute_time_s(fam.recompute_tok * mb_tokens, fam.peak, eff)
    compute_s = ga * (mb_compute_s - mb_recompute_s)
    recompute_s = ga * mb_recompute_s
    # forward : backward split of one micro-batch, for the overlap windows (full: 1 : 2, frozen: 1 : 1)
    fwd_share = 1 / 3 if cfg.method is Method.full else 1 / 2
    fwd_s = (mb_compute_s - mb_recompute_s) * fwd_share
    bwd_s = mb_compute_s - fwd_s

    bubble_s = (compute_s + recompute_s) * bubble_fraction(pp, ga, cfg.pp_schedule, cfg.virtual_stages)
    dequant_s = ga * cp.dequant_bytes_per_micro_batch(cfg) / gpu.hbm_bytes_per_s if cfg.quant is not Quant.none \
        else 0.0

    act_bytes = 4 if cfg.precision is Precision.fp32 else 2
    tp_s = 0.0
    if tp > 1:
        tp_group = pc.intra_node_group(cluster, tp, comm_eff)
        tp_s = ga * pc.tp_time_per_micro_batch_s(b=mb_tokens // s, s=s, h=m.hidden_size, act_bytes=act_bytes,
                                                 layers=fam.stage_layers, t=tp,
                                                 recompute_forward=cfg.grad_ckpt is GradCkpt.full, g=tp_group)
    pp_s = 0.0
    if pp > 1:
        # with sequence parallelism the boundary tensor is already split along s over the TP ranks, so
        # each rank sends 1/t of it (Korthikanti et al. 2022, Sec. 4.2.2)
        msg = boundary_activation_bytes(mb, sample_tokens, m.hidden_size, act_bytes, t=tp,
                                        scatter_gather=cfg.sequence_parallel)
        pp_s = p2p_messages_per_step(pp, ga, cfg.pp_schedule, cfg.virtual_stages) * \
            pc.pp_time_per_message_s(msg, cluster, tp, pp, comm_eff)

    dp_total, dp_exposed, offload_s = _data_parallel(cfg, dp, fam.trainable_gpu, fam.param_bytes_gpu, fwd_s, bwd_s,
                                                     comm_eff)
    offload_total, opt_s = _offload_and_optimizer(cfg, dp, fam.trainable_gpu, bwd_s)
    offload_s += offload_total + ga * knobs.activation_offload_exposed_s(cfg, fwd_s, bwd_s)

    parts = {"compute": compute_s, "recompute": recompute_s, "pipeline_bubble": bubble_s, "dequantize": dequant_s,
             "tp_comm": tp_s, "pp_comm": pp_s, "dp_comm": dp_exposed, "offload": offload_s, "optimizer": opt_s}
    step_s = compute_s + recompute_s + bubble_s + dequant_s + tp_s + pp_s + dp_exposed + offload_s + opt_s
    job_tokens = global_batch * sample_tokens
    peak_job = step_s * cluster.nodes * cluster.gpus_per_node * fam.peak
    return StepTime(step_time_s=step_s, breakdown_s=parts, tokens_per_s=global_batch * s / step_s,
                    samples_per_s=global_batch / step_s, mfu=fam.model_flops_tok * job_tokens / peak_job,
                    hfu=fam.hardware_flops_tok * job_tokens / peak_job,
                    model_flops_per_step=fam.model_flops_tok * job_tokens, dp_comm_total_s=dp_total)


def _data_parallel(cfg: TrainConfig, dp: int, trainable_gpu: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
                   comm_eff: float) -> tuple[float, float, float]:
    """(total, exposed) data-parallel communication per step, and host-link time of parameter offload that
    rides on the gathers: the engine's (planner/engines/)."""
    if dp <= 1:
        return 0.0, 0.0, 0.0
    g = pc.dp_group(cfg.cluster, cfg.tp, cfg.pp, dp, comm_eff)
    return engines.of(cfg).dp_comm(cfg, g, trainable_gpu, param_bytes_gpu, fwd_s, bwd_s, comm_eff)


def _offload_and_optimizer(cfg: TrainConfig, dp: int, trainable_gpu: float, bwd_s: float) -> tuple[float, float]:
    """(offload seconds, GPU optimizer seconds) per step."""
    gpu, eng = cfg.cluster.gpu, engines.of(cfg)
    n = eng.optimizer_shards(cfg)
    params_rank = trainable_gpu / n
    if cfg.offload is Offload.none:
        opt_s = params_rank * optimizer_bytes_per_param(cfg.optimizer, cfg.precision) / gpu.hbm_bytes_per_s
        return 0.0, opt_s
    ranks = cfg.cluster.gpus_per_node
    link = gpu.host_link_bytes_per_s
    # gradients to the host (fp32 after DeepSpeed's upcast on the GPU), every micro-batch under
    # ZeRO-2/3 and FSDP, overlapped with backward; updated 16-bit weights back once per step
    d2h_each = off.pcie_time_s(params_rank * 4.0, link)
    d2h_count = eng.gradient_offloads_per_step(cfg)
    d2h_exposed = d2h_count * max(0.0, d2h_each - bwd_s)
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
