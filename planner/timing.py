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
from functools import cache

from planner import collectives as col
from planner import compute as cp
from planner import kernels as kn
from planner import offload_time as off
from planner import parallel_comm as pc
from planner.calibration import DEFAULT, Calibration
from planner.comm import DEFAULT_COMM_EFFICIENCY, Group, allgather_time_s, allreduce_time_s, split_time_s
from planner.deepspeed_sizes import allgather_bucket_elements, reduce_bucket_elements
from planner.errors import PlanError
from planner.models import ModelSpec
from planner.params import embedding_params, layer_params, lora_params, quantizable_params, total_params
from planner.pipeline import boundary_activation_bytes, bubble_fraction, p2p_messages_per_step
from planner.strategy import (
    Engine,
    FsdpStrategy,
    GradCkpt,
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

BREAKDOWN_KEYS = ("compute", "recompute", "pipeline_bubble", "dequantize", "tp_comm", "pp_comm", "dp_comm",
                  "offload", "optimizer", "framework")


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
def _param_counts(m: ModelSpec, method: Method, r: int, targets: tuple[str, ...], freeze: int, quant: Quant,
                  stage: Stage) -> tuple[float, float, float]:
    """(total, trainable, quantized) parameters of the whole model."""
    total = float(total_params(m))
    if method is Method.full:
        trainable = total
        if freeze:
            trainable -= min(freeze, m.num_layers) * layer_params(m) + embedding_params(m)
    else:
        trainable = float(lora_params(m, r, targets))
    if stage is Stage.rm:
        trainable += m.hidden_size
    quantized = float(quantizable_params(m)) if quant is not Quant.none else 0.0
    return total, trainable, quantized


def _quant_bytes(quant: Quant) -> float:
    from planner.memory import quant_bytes_per_param

    return quant_bytes_per_param(quant, True)


@cache
def _flops(m: ModelSpec, tr: cp.Training, tp: int, pp: int) -> tuple[float, float, float]:
    """Per token: (hardware FLOPs on the most loaded GPU, model FLOPs of the whole model, recompute FLOPs
    on that GPU). The last pipeline stage holds ceil(L/p) layers and the LM head; TP splits it t ways."""
    layers = -(-m.num_layers // pp)
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


def _overlap(comm_s: float, window_s: float, tail_s: float) -> float:
    """Exposed part of communication that runs beside `window_s` of compute; the last bucket (`tail_s`)
    is always exposed."""
    if comm_s <= 0:
        return 0.0
    return max(comm_s - window_s, min(tail_s, comm_s))


@dataclass(frozen=True, slots=True)
class _Family:
    """What a step's time needs that does not depend on batch shape or engine: FLOPs per token and
    parameter bytes per GPU, for one model / method / parallel layout / precision."""

    model: ModelSpec  # held so the id() in the cache key stays unique while cached
    gpu_flops_tok: float
    model_flops_tok: float
    hardware_flops_tok: float
    recompute_tok: float
    trainable_gpu: float
    param_bytes_gpu: float
    stage_layers: int
    peak: float


_FAMILIES: dict[tuple, _Family] = {}


def _family(cfg: TrainConfig) -> _Family:
    m = cfg.model
    key = (id(m), id(cfg.cluster.gpu), cfg.method, cfg.lora_r, cfg.lora_targets, cfg.freeze_layers, cfg.grad_ckpt,
           cfg.seq_len, cfg.stage, cfg.tp, cfg.pp, cfg.precision, cfg.quant)
    fam = _FAMILIES.get(key)
    if fam is None or fam.model is not m:
        tr = cp.training_of(cfg)
        gpu_tok, model_tok, recompute_tok = _flops(m, tr, cfg.tp, cfg.pp)
        total_p, trainable_p, quant_p = _param_counts(m, cfg.method, cfg.lora_r, cfg.lora_targets,
                                                      cfg.freeze_layers, cfg.quant, cfg.stage)
        split = cfg.tp * cfg.pp
        w_bytes = 4.0 if cfg.precision is Precision.fp32 else 2.0
        fam = _Family(model=m, gpu_flops_tok=gpu_tok, model_flops_tok=model_tok,
                      hardware_flops_tok=cp.flops_per_token(m, tr).hardware, recompute_tok=recompute_tok,
                      trainable_gpu=trainable_p / split,
                      param_bytes_gpu=((total_p - quant_p) * w_bytes + quant_p * _quant_bytes(cfg.quant)) / split,
                      stage_layers=cp.stage_layers(cfg), peak=cp.peak_flops_per_s(cfg.cluster.gpu, cfg.precision))
        _FAMILIES[key] = fam
    return fam


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
    sample_tokens = s * 2 if cfg.stage is Stage.dpo else s
    mb_tokens = mb * sample_tokens
    shape = _shape_factor(cfg, mb_tokens, fam.peak, eff)
    mb_compute_s = shape * cp.compute_time_s(fam.gpu_flops_tok * mb_tokens, fam.peak, eff) + \
        kn.attention_memory_s(m, cfg.attn, mb, sample_tokens, fam.stage_layers, tp, _elem_bytes(cfg), gpu) + \
        _lora_memory_s(cfg, mb_tokens, fam.stage_layers)
    mb_recompute_s = shape * cp.compute_time_s(fam.recompute_tok * mb_tokens, fam.peak, eff)
    compute_s = ga * (mb_compute_s - mb_recompute_s)
    recompute_s = ga * mb_recompute_s
    framework_s = ga * _host_dispatch_s(cfg, fam.stage_layers, mb_compute_s)
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
    framework_s += ga * _hook_host_s(cfg, dp, fam.stage_layers)
    offload_total, opt_s = _offload_and_optimizer(cfg, dp, fam.trainable_gpu, bwd_s)
    offload_s += offload_total

    parts = {"compute": compute_s, "recompute": recompute_s, "pipeline_bubble": bubble_s, "dequantize": dequant_s,
             "tp_comm": tp_s, "pp_comm": pp_s, "dp_comm": dp_exposed, "offload": offload_s, "optimizer": opt_s,
             "framework": framework_s}
    step_s = sum(parts.values())
    job_tokens = global_batch * sample_tokens
    peak_job = step_s * cluster.nodes * cluster.gpus_per_node * fam.peak
    return StepTime(step_time_s=step_s, breakdown_s=parts, tokens_per_s=global_batch * s / step_s,
                    samples_per_s=global_batch / step_s, mfu=fam.model_flops_tok * job_tokens / peak_job,
                    hfu=fam.hardware_flops_tok * job_tokens / peak_job,
                    model_flops_per_step=fam.model_flops_tok * job_tokens, dp_comm_total_s=dp_total)


def _elem_bytes(cfg: TrainConfig) -> float:
    return 4.0 if cfg.precision is Precision.fp32 else 2.0


_SHAPES: dict[tuple, float] = {}


def _shape_factor(cfg: TrainConfig, tokens: int, peak: float, eff: float) -> float:
    """Time of one micro-batch's GEMMs (decoder layers and LM head) over the time of their FLOPs at
    large-shape efficiency (planner/kernels.py: wave quantization, the CPU's GEMM curve, roofline)."""
    m, gpu = cfg.model, cfg.cluster.gpu
    key = (id(m), gpu.name, tokens, cfg.method, cfg.lora_r, cfg.lora_targets, cfg.tp, cfg.precision, peak, eff)
    hit = _SHAPES.get(key)
    if hit is not None:
        return hit
    full = cfg.method is Method.full
    fwd, bwd = kn.layer_gemms(m, tokens, cfg.method, cfg.lora_r, cfg.lora_targets, full, cfg.tp)
    v = max(1, m.vocab_size // cfg.tp)
    head = (kn.Gemm(tokens, m.hidden_size, v), kn.Gemm(tokens, v, m.hidden_size)) + \
        ((kn.Gemm(m.hidden_size, tokens, v),) if full else ())
    elem = _elem_bytes(cfg)
    layers = -(-m.num_layers // cfg.pp)
    flops = sum(2.0 * g.m * g.k * g.n * g.count for g in fwd + bwd) * layers + \
        sum(2.0 * g.m * g.k * g.n for g in head)
    actual = sum(kn.gemm_time_s(g, gpu, peak, eff, elem) for g in fwd + bwd) * layers + \
        sum(kn.gemm_time_s(g, gpu, peak, eff, elem) for g in head)
    factor = max(1.0, actual / (flops / (peak * eff))) if flops > 0 else 1.0
    _SHAPES[key] = factor
    return factor


def _lora_memory_s(cfg: TrainConfig, tokens: int, layers: int) -> float:
    """LoRA's elementwise traffic per micro-batch (dropout, scaling, add: planner/kernels.py)."""
    if cfg.method is Method.full:
        return 0.0
    per_layer = kn.lora_elementwise_bytes(cfg.model, tokens, cfg.lora_targets, cfg.tp, _elem_bytes(cfg))
    return layers * per_layer / cfg.cluster.gpu.hbm_bytes_per_s


def _host_dispatch_s(cfg: TrainConfig, layers: int, mb_compute_s: float) -> float:
    """Host time of one micro-batch's eager ops not hidden behind the device (planner/kernels.py): all of
    it on the CPU, where host and device are one; on a GPU only what exceeds the device's work."""
    gpu = cfg.cluster.gpu
    host_s = kn.host_ops_per_micro_batch(cfg.model, layers, cfg.method, cfg.lora_targets, cfg.grad_ckpt) * \
        gpu.host_op_s
    return host_s if gpu.sm_count <= 0 else max(0.0, host_s - mb_compute_s)


def _hook_host_s(cfg: TrainConfig, dp: int, layers: int) -> float:
    """Per micro-batch: host work of ZeRO-3's and FSDP's parameter hooks, on the critical path
    (planner/collectives.py)."""
    gpu = cfg.cluster.gpu
    if cfg.engine is Engine.deepspeed and cfg.zero is ZeroStage.WEIGHTS:
        per = gpu.zero3_module_host_s if gpu.zero3_module_host_s is not None else \
            col.ZERO3_MODULE_HOST_OPS * gpu.host_op_s
        # a recomputed forward runs every module's forward hooks again: 3 hooked passes instead of 2
        passes = 1.5 if cfg.grad_ckpt is GradCkpt.full else 1.0
        return col.zero3_modules(cfg.model, layers, cfg.method, cfg.lora_targets) * per * passes
    if cfg.engine is Engine.fsdp and cfg.fsdp is not FsdpStrategy.no_shard:
        per = gpu.fsdp_unit_host_s if gpu.fsdp_unit_host_s is not None else col.FSDP_UNIT_HOST_OPS * gpu.host_op_s
        return col.fsdp_units(layers) * per
    return 0.0


def _data_parallel(cfg: TrainConfig, dp: int, trainable_gpu: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
                   comm_eff: float) -> tuple[float, float, float]:
    """(total, exposed) data-parallel communication per step, and host-link time of parameter offload that
    rides on the gathers. Each engine's collectives are split into the calls it really issues
    (planner/collectives.py), each paying its latency."""
    ga, cluster = cfg.grad_accum, cfg.cluster
    if dp <= 1:
        return 0.0, 0.0, 0.0
    g = pc.dp_group(cluster, cfg.tp, cfg.pp, dp, comm_eff)
    overlap = _overlap if cluster.gpu.overlaps_comm else _no_overlap
    fp32 = cfg.precision is Precision.fp32
    engine = cfg.engine
    if engine is Engine.ddp or (engine is Engine.fsdp and cfg.fsdp is FsdpStrategy.no_shard):
        # DDP reduces gradients in the parameter's dtype: fp32 master weights under *-mixed
        grad_bytes = trainable_gpu * (2.0 if cfg.precision is Precision.bf16_true else 4.0)
        calls = col.ddp_buckets(grad_bytes)
        ar = split_time_s(allreduce_time_s, grad_bytes, calls, g)
        return ar, overlap(ar, bwd_s, ar / calls), 0.0
    grad_bytes = trainable_gpu * (4.0 if fp32 else 2.0)  # DeepSpeed / FSDP MixedPrecision reduce in 16 bits
    elem = 4.0 if fp32 else 2.0
    if engine is Engine.deepspeed:
        bucket = reduce_bucket_elements(cfg.model) * elem
        rs_calls = col.buckets(grad_bytes, bucket)
        if cfg.zero is ZeroStage.DISABLED:
            ar = split_time_s(allreduce_time_s, grad_bytes, rs_calls, g)
            return ar, overlap(ar, bwd_s, ar / rs_calls), 0.0
        rs = split_time_s(pc.grad_reduce_scatter_s, grad_bytes, rs_calls, g)
        if cfg.zero in (ZeroStage.OPTIMIZER_STATES, ZeroStage.GRADIENTS):
            # ZeRO-1 reduces once per step (it keeps whole gradients); ZeRO-2 every micro-batch, since
            # it keeps only its partition; then the updated 16-bit partitions are all-gathered.
            n_rs = 1 if cfg.zero is ZeroStage.OPTIMIZER_STATES else ga
            ag_bytes = trainable_gpu * elem
            ag = split_time_s(allgather_time_s, ag_bytes, col.buckets(ag_bytes, allgather_bucket_elements(cfg.model)
                                                                      * elem), g)
            return n_rs * rs + ag, n_rs * overlap(rs, bwd_s, rs / rs_calls) + ag, 0.0
        modules = col.param_modules(cfg.model, fam_layers(cfg), cfg.method, cfg.lora_targets)
        # the recomputed forward of full checkpointing gathers the released parameters once more
        gathers = 3 if cfg.grad_ckpt is GradCkpt.full else 2
        return _sharded(cfg, g, grad_bytes, param_bytes_gpu, fwd_s, bwd_s, modules, rs_calls, gathers=gathers)
    units = col.fsdp_units(fam_layers(cfg))
    if cfg.fsdp is FsdpStrategy.hybrid_shard:
        shard = g.per_node
        intra = pc.intra_node_group(cluster, shard, comm_eff)
        total, exposed, h2d = _sharded(cfg, intra, grad_bytes, param_bytes_gpu, fwd_s, bwd_s, units, units,
                                       gathers=2)
        replicas = Group(n=dp // shard, per_node=1, intra_bytes_per_s=g.intra_bytes_per_s,
                         inter_bytes_per_s=g.inter_bytes_per_s)
        ar = ga * split_time_s(allreduce_time_s, grad_bytes / shard, units, replicas)
        return total + ar, exposed + overlap(ar, ga * bwd_s, ar / (ga * units)), h2d
    gathers = 1 if cfg.fsdp is FsdpStrategy.shard_grad_op else 2
    return _sharded(cfg, g, grad_bytes, param_bytes_gpu, fwd_s, bwd_s, units, units, gathers=gathers)


def fam_layers(cfg: TrainConfig) -> int:
    return -(-cfg.model.num_layers // cfg.pp)


def _no_overlap(comm_s: float, window_s: float, tail_s: float) -> float:
    """Devices whose communication runs on the compute cores (the CPU): nothing is hidden."""
    return comm_s


def _sharded(cfg: TrainConfig, g: Group, grad_bytes: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
             gather_calls: int, rs_calls: int, *, gathers: int) -> tuple[float, float, float]:
    """ZeRO-3 / FSDP: per micro-batch, gather the weights module by module (unit by unit) for forward, and
    again for backward unless they stay unsharded (SHARD_GRAD_OP), and reduce-scatter the gradients in
    buckets; with parameter offload the partition first crosses the host link (Rajbhandari et al. 2021,
    ZeRO-Infinity Sec. 5). Prefetching overlaps a gather with the previous module's compute, so the
    first gather of each pass (`tail`) is always exposed."""
    ga = cfg.grad_accum
    overlap = _overlap if cfg.cluster.gpu.overlaps_comm else _no_overlap
    ag = split_time_s(pc.param_allgather_s, param_bytes_gpu, gather_calls, g)
    rs = split_time_s(pc.grad_reduce_scatter_s, grad_bytes, rs_calls, g)
    h2d = 0.0
    if cfg.offload is Offload.all:
        part = param_bytes_gpu / g.n
        if cfg.offload_device is OffloadDevice.nvme:
            h2d = off.nvme_time_s(part, cfg.cluster.gpus_per_node)
        h2d += off.pcie_time_s(part, cfg.cluster.gpu.host_link_bytes_per_s)
    tail = ag / gather_calls
    fwd_exposed = overlap(ag, fwd_s, tail)
    bwd_exposed = overlap((gathers - 1) * ag + rs, bwd_s, tail)
    total = ga * (gathers * ag + rs)
    # host-to-GPU copies of offloaded partitions sit on the critical path: DeepSpeed copies the CPU
    # partition into the gather buffer before launching the all-gather (partition_parameters.py,
    # `_all_gather` of ds_tensor), and FSDP's CPUOffload moves the shard to the GPU before unsharding
    return total, ga * (fwd_exposed + bwd_exposed), ga * gathers * h2d


def _offload_and_optimizer(cfg: TrainConfig, dp: int, trainable_gpu: float, bwd_s: float) -> tuple[float, float]:
    """(offload seconds, GPU optimizer seconds) per step."""
    gpu, ga = cfg.cluster.gpu, cfg.grad_accum
    sharded_states = (cfg.engine is Engine.deepspeed and cfg.zero >= ZeroStage.OPTIMIZER_STATES) or \
        (cfg.engine is Engine.fsdp and cfg.fsdp is not FsdpStrategy.no_shard)
    n = dp if sharded_states else 1
    if cfg.engine is Engine.fsdp and cfg.fsdp is FsdpStrategy.hybrid_shard:
        n = max(1, min(dp, cfg.cluster.gpus_per_node // (cfg.tp * cfg.pp)))
    params_rank = trainable_gpu / n
    if cfg.offload is Offload.none:
        opt_s = params_rank * optimizer_bytes_per_param(cfg.optimizer, cfg.precision) / gpu.hbm_bytes_per_s
        return 0.0, opt_s
    ranks = cfg.cluster.gpus_per_node
    link = gpu.host_link_bytes_per_s
    # gradients to the host (fp32 after DeepSpeed's upcast on the GPU), every micro-batch under
    # ZeRO-2/3 and FSDP, overlapped with backward; updated 16-bit weights back once per step
    d2h_each = off.pcie_time_s(params_rank * 4.0, link)
    d2h_count = 1 if (cfg.engine is Engine.deepspeed and cfg.zero is ZeroStage.OPTIMIZER_STATES) else ga
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
