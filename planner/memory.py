"""Memory per GPU, in bytes, at the peak of a training step.

A step has three candidate peaks; the breakdown reported is the one of the largest:
- "backward": the loss backward has just started: all saved activations, the logits and loss
  buffers, and (with gradient accumulation) the gradients of earlier micro-batches;
- "gradients": the end of backward: every gradient, no activations;
- "optimizer": the optimizer step: gradients, states and the step's temporaries.

Model states follow Rajbhandari et al. 2020 (ZeRO, Sec. 3 and Fig. 1): with mixed precision and Adam
each trainable parameter costs 2 (16-bit weight) + 2 (16-bit gradient) + K = 12 (fp32 master, momentum,
variance) bytes, and ZeRO stage 1/2/3 partitions optimizer states / gradients / weights over the
data-parallel group. DeepSpeed also keeps an fp32 gradient partition (4 bytes), which its own
estimator counts (deepspeed/runtime/zero/stage_1_and_2.py: 2P + 18P/N for ZeRO-2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner import deepspeed_sizes as ds
from planner.activations import (
    LayerTraining,
    hf_layer_bytes_per_token,
    logits_bytes_per_token,
    trl_logprob_head_bytes,
)
from planner.calibration import DEFAULT, Calibration
from planner.params import (
    embedding_params,
    head_params,
    layer_params,
    lora_params,
    norm_params,
    quantizable_params,
    resolve_lora_targets,
)
from planner.strategy import (
    Engine,
    FsdpStrategy,
    GradCkpt,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    PipeSchedule,
    Precision,
    Quant,
    Stage,
    TrainConfig,
    ZeroStage,
)

CATEGORIES = ("weights", "gradients", "optimizer", "activations", "other")
# "other" items live only in the backward phase (gone by the end of backward and the optimizer step)
BACKWARD_ONLY_ITEMS = ("logits and loss", "dequantized weight", "autocast weight copies",
                       "ZeRO-3 parameters kept for backward")


@dataclass(frozen=True, slots=True)
class MemoryBreakdown:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    other: float
    phase: str  # which peak: "backward", "gradients" or "optimizer"
    other_items: dict[str, float] = field(default_factory=dict)
    host_bytes: float = 0.0  # per node, for offload
    nvme_bytes: float = 0.0  # per node, for NVMe offload

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.other

    def as_dict(self) -> dict[str, int]:
        return {"weights": round(self.weights), "gradients": round(self.gradients),
                "optimizer": round(self.optimizer), "activations": round(self.activations),
                "other": round(self.other), "total": round(self.total)}


# --- bytes per element -------------------------------------------------------------------------

def quant_bytes_per_param(quant: Quant, double_quant: bool) -> float:
    """bitsandbytes storage. NF4: 4 bits plus one absmax per 64-weight block, fp32 (0.5 bits/param) or,
    with double quantization, 8-bit absmax plus one fp32 constant per 256 blocks (0.127 bits/param):
    Dettmers et al. 2023 (QLoRA), Sec. 3 "Double Quantization". LLM.int8(): one byte per weight
    plus one fp32 scale per row (Dettmers et al. 2022), counted here per weight of a 4096-wide row."""
    if quant is Quant.nf4:
        return (4 + (8 / 64 + 32 / (64 * 256) if double_quant else 32 / 64)) / 8
    if quant is Quant.int8:
        return 1 + 4 / 4096
    return 2.0


def optimizer_state_bytes_per_param(optimizer: Optimizer, precision: Precision) -> float:
    """States the optimizer keeps per trainable parameter. torch AdamW keeps exp_avg and exp_avg_sq in
    the parameter's dtype (8 bytes for fp32 parameters, 4 for bf16); bitsandbytes 8-bit AdamW keeps two
    uint8 states plus an fp32 absmax per 256-element block (bitsandbytes/optim/optimizer.py,
    block-wise quantization, Dettmers et al. 2021); SGD with momentum keeps one buffer."""
    dtype_bytes = 2 if precision is Precision.bf16_true else 4
    if optimizer in (Optimizer.adamw, Optimizer.paged_adamw):
        return 2 * dtype_bytes
    if optimizer in (Optimizer.adamw_8bit, Optimizer.paged_adamw_8bit):
        return 2 * (1 + 4 / 256)
    return dtype_bytes  # SGD momentum buffer


def activation_dtype_bytes(precision: Precision) -> int:
    return 4 if precision is Precision.fp32 else 2


# --- how the parameters are spread --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StageParams:
    """Parameters one GPU holds for its pipeline stage and tensor-parallel rank, before sharding."""

    total: float
    trainable: float
    quantized: float  # base weights stored by bitsandbytes
    layers: int  # decoder layers on this stage
    trainable_layers: int  # layers whose activations are saved
    has_head: bool


def stage_params(cfg: TrainConfig, *, first: bool) -> StageParams:
    m, t, p = cfg.model, cfg.tp, cfg.pp
    layers = math.ceil(m.num_layers / p)
    has_embedding = first or (m.tie_embeddings and p > 1)  # a tied embedding lives on both ends
    has_head = (not first) or p == 1
    total = layers * layer_params(m) / t
    if has_embedding:
        total += embedding_params(m) / t
    if has_head:
        # a reward model (AutoModelForSequenceClassification) ends in a 1-output `score` (h weights) instead of
        # the LM head (transformers' LlamaForSequenceClassification; TRL's RewardTrainer)
        total += (norm_params(m) + m.hidden_size if cfg.stage is Stage.rm else head_params(m)) / t
    frozen_layers = min(cfg.freeze_layers, m.num_layers)
    if cfg.method is Method.full:
        trainable = total
        if frozen_layers:
            frozen_here = frozen_layers if p == 1 else (min(frozen_layers, layers) if first else
                                                        max(0, frozen_layers - (m.num_layers - layers)))
            trainable -= frozen_here * layer_params(m) / t + (embedding_params(m) / t if has_embedding else 0)
        trainable_layers = layers if p > 1 else m.num_layers - frozen_layers
        quantized = 0.0
    else:
        trainable = layers * lora_params(m, cfg.lora_r, cfg.lora_targets) / m.num_layers / t
        trainable_layers = layers
        quantized = layers * quantizable_params(m) / m.num_layers / t if cfg.quant is not Quant.none else 0.0
    if cfg.stage is Stage.rm and has_head and cfg.method is not Method.full:
        trainable += m.hidden_size  # the score head trains beside the adapters (peft SEQ_CLS modules_to_save)
    return StageParams(total=total, trainable=trainable, quantized=quantized, layers=layers,
                       trainable_layers=trainable_layers, has_head=has_head)


def shard_group(cfg: TrainConfig) -> int:
    """Ranks a sharded state is split over: the data-parallel group, or within one node for hybrid."""
    if cfg.engine is Engine.fsdp and cfg.fsdp is FsdpStrategy.hybrid_shard:
        per_node = max(1, cfg.cluster.gpus_per_node // (cfg.tp * cfg.pp))
        return min(cfg.dp, per_node)
    return cfg.dp


def zero3_kept_for_backward_elements(cfg: TrainConfig, *, first: bool) -> float:
    """Gathered parameters ZeRO-3 keeps from forward into backward, elements per GPU, at backward's start.

    Once the module trace is complete (from the second step), releasing a module's parameters after its
    forward skips every parameter that is used again within `stage3_max_reuse_distance` parameters of the
    trace (partitioned_param_coordinator.py, `__params_to_release`: it walks `__submodule_order` from the
    current step, counting `ds_numel`, and discards reused ones until the count reaches the distance).
    The trace is forward then backward in reverse, so a module is next used after twice the parameters of
    the modules that follow it in forward: it stays gathered iff 2 * (parameters after it) < the distance.
    `stage3_max_live_parameters` only limits prefetching (`__max_n_available_params`), not this. Counted
    per decoder layer (its linears are separate modules, so part of one more layer may stay as well).
    Not modelled: the same function also keeps parameters whose next use a prefetch skipped
    (`__most_recent_step_id_param_fetched_for`); with the default distance (1e9) this adds nothing for
    a model under 5e8 parameters (all kept anyway), but with a distance of 0 it still kept 42 of the
    85 decoder linears of a 134M Llama on 2 CPU ranks.
    """
    m, t = cfg.model, cfg.tp
    sp = stage_params(cfg, first=first)
    has_embedding = first or (m.tie_embeddings and cfg.pp > 1)
    forward = ([embedding_params(m) / t] if has_embedding else []) + [layer_params(m) / t] * sp.layers + (
        [head_params(m) / t] if sp.has_head else [])
    kept, after = 0.0, 0.0
    for numel in reversed(forward):
        if 2 * after < ds.STAGE3_MAX_REUSE_DISTANCE:
            kept += numel
        after += numel
    return kept


# --- the three phases ---------------------------------------------------------------------------

def memory_per_gpu(cfg: TrainConfig, cal: Calibration = DEFAULT) -> MemoryBreakdown:
    """Peak bytes on the most loaded GPU (pipeline stage 0 or the last stage)."""
    if cfg.pp == 1:
        return _stage_memory(cfg, cal, first=True)
    first, last = _stage_memory(cfg, cal, first=True), _stage_memory(cfg, cal, first=False)
    return first if first.total >= last.total else last


def _stage_memory(cfg: TrainConfig, cal: Calibration, *, first: bool) -> MemoryBreakdown:
    m, gpu = cfg.model, cfg.cluster.gpu
    sp = stage_params(cfg, first=first)
    n = shard_group(cfg)
    engine, zero, prec = cfg.engine, cfg.zero, cfg.precision
    mixed = prec in (Precision.bf16_mixed, Precision.fp16_mixed)
    ds_engine = engine is Engine.deepspeed
    fsdp_sharded = engine is Engine.fsdp and cfg.fsdp is not FsdpStrategy.no_shard
    offload_opt = cfg.offload is not Offload.none
    offload_params = cfg.offload is Offload.all
    items: dict[str, float] = {}

    # weights: 16-bit copies under DeepSpeed (fp32 master lives in the optimizer); under DDP/FSDP with
    # mixed precision the trainable weights are the fp32 master and frozen ones stay in 16 bits
    # (how LLaMA-Factory and peft load them); bitsandbytes stores the quantized base weights.
    # LoRA's adapters come on top of the base model, whose weights all stay frozen (sp.total counts the base)
    frozen = sp.total - sp.trainable if cfg.method is Method.full else sp.total
    if prec is Precision.fp32:
        trainable_w_bytes, frozen_w_bytes = 4.0, 4.0
    elif prec is Precision.bf16_true or ds_engine:
        trainable_w_bytes, frozen_w_bytes = 2.0, 2.0
    else:
        trainable_w_bytes, frozen_w_bytes = 4.0, 2.0
    q_bytes = quant_bytes_per_param(cfg.quant, cfg.double_quant)
    weights = sp.trainable * trainable_w_bytes + (frozen - sp.quantized) * frozen_w_bytes + sp.quantized * q_bytes
    sixteen_bit_weights = sp.trainable * 2 + (frozen - sp.quantized) * 2 + sp.quantized * q_bytes
    if cfg.stage is Stage.dpo and cfg.method is Method.full:
        # TRL's frozen reference model (peft reuses the base with adapters off) in the policy's dtype:
        # DPOTrainer builds it with dtype=model.dtype (trl/trainer/dpo_trainer.py, ref_model_init_kwargs),
        # so fp32 under DDP/FSDP mixed precision, where the policy holds fp32 masters, and DeepSpeed casts it
        # to 16 bits with the engine (trl prepare_deepspeed). Measured: 2xCPU fp32 full DPO, see README.
        weights += sp.total * trainable_w_bytes
    if cfg.stage is Stage.ppo:
        # actor and critic train, reference and reward models are frozen (TRL PPO); with peft the
        # reference is the base with adapters off and the critic is a value head on the actor.
        weights += sixteen_bit_weights * (3 if cfg.method is Method.full else 1)
    weights_sharded = (ds_engine and zero >= ZeroStage.WEIGHTS) or fsdp_sharded and cfg.fsdp is not \
        FsdpStrategy.shard_grad_op
    if weights_sharded:
        weights /= n
    if offload_params:
        host_weights = weights
        weights = 0.0
    else:
        host_weights = 0.0

    # gradients of trainable parameters
    models_trained = 2 if (cfg.stage is Stage.ppo and cfg.method is Method.full) else 1
    t_params = sp.trainable * models_trained
    grad_bytes = 2.0 if prec is Precision.bf16_true else 4.0  # gradients take the parameter's dtype
    # DeepSpeed's "bit16" groups and buffers and FSDP's gathered units hold the compute copy of the
    # weights: 16-bit, or fp32 in a 32-true run (the profiler's fp32 CPU runs measure it)
    c16 = 4.0 if prec is Precision.fp32 else 2.0
    host_grads = 0.0
    if ds_engine:
        fp32_grad = 4.0 if mixed else 0.0
        if zero is ZeroStage.DISABLED:
            grads = t_params * (c16 + fp32_grad)
        elif zero is ZeroStage.OPTIMIZER_STATES:
            grads = t_params * c16 + t_params * fp32_grad / n
        else:
            grads = t_params * (c16 + fp32_grad) / n
        if offload_opt and zero >= ZeroStage.OPTIMIZER_STATES:
            # gradients stream to pinned host buffers partition by partition (ZeRO-Offload): the fp32
            # partition, plus ZeRO-1/2's 16-bit CPU accumulation buffers only when several micro-batches
            # accumulate (stage_1_and_2.py, copy_grads_in_partition -> async_accumulate_grad_in_cpu_via_gpu);
            # ZeRO-3 keeps its 16-bit gradient partition on the host either way (stage3.py).
            host_16bit = 2.0 if (zero is ZeroStage.WEIGHTS or cfg.grad_accum > 1) else 0.0
            host_grads = t_params * (host_16bit + fp32_grad) / n
            grads = t_params * 2 if zero is ZeroStage.OPTIMIZER_STATES else 0.0
    elif fsdp_sharded:
        grads = t_params * grad_bytes / n
        if offload_params:
            host_grads, grads = grads, 0.0
    else:
        grads = t_params * grad_bytes

    # optimizer states (+ fp32 master under DeepSpeed mixed precision)
    state_bytes = optimizer_state_bytes_per_param(cfg.optimizer, prec)
    # ZeRO-1/2 clone the fp32 partition even when the weights already are fp32
    # (stage_1_and_2.py: single_partition_of_fp32_groups = bit16 partition .detach().clone()). ZeRO-3 does
    # too: stage3.py `_create_fp32_partitions` reuses the partition only if its dtype matches and
    # `partition.device == self.device`, but self.device is the accelerator's device *name*, a str ('cuda:0',
    # 'cpu': accelerator/*_accelerator.py, current_device_name), and torch.device == str is False, so it takes
    # the `.to(...).clone()` branch on every device (DeepSpeed 0.19.8; measured: a second fp32 partition).
    master = 4.0 if (ds_engine and (mixed or (prec is Precision.fp32 and zero >= ZeroStage.OPTIMIZER_STATES))) else 0.0
    optim = t_params * (state_bytes + master)
    # DeepSpeed's pipeline engine with bf16 runs BF16_Optimizer even at ZeRO-0 (engine.py,
    # _do_optimizer_sanity_check), which splits the fp32 master and Adam states over the DP group
    # (bf16_optimizer.py, fp32_groups_flat_partition) and keeps full bf16 + fp32 gradients.
    bf16_pipe = ds_engine and zero is ZeroStage.DISABLED and cfg.pp > 1 and prec is Precision.bf16_mixed
    if (ds_engine and zero >= ZeroStage.OPTIMIZER_STATES) or fsdp_sharded or bf16_pipe:
        optim /= n
    host_optim = 0.0
    if offload_opt:
        host_optim, optim = optim, 0.0

    # activations of one micro-batch, times the micro-batches a pipeline stage keeps in flight
    e = activation_dtype_bytes(prec)
    tokens = cfg.micro_batch * cfg.seq_len * (2 if cfg.stage is Stage.dpo else 1)  # DPO: chosen + rejected
    lora_targets = frozenset(resolve_lora_targets(m, cfg.lora_targets)) if cfg.trains_adapter else frozenset()
    # TRL's RewardTrainer and DPOTrainer set every dropout to p=0 (disable_dropout=True by default,
    # trl/trainer/utils.py disable_dropout_in_model), LoRA's included: no dropout copy is saved
    dropout = cfg.lora_dropout > 0 and cfg.stage not in (Stage.rm, Stage.dpo)
    train = LayerTraining(weights=cfg.method is Method.full, lora_targets=lora_targets, lora_dropout=dropout)
    per_layer = hf_layer_bytes_per_token(m, act_bytes=e, attn=cfg.attn, train=train, seq_len=cfg.seq_len,
                                         t=cfg.tp, sequence_parallel=cfg.sequence_parallel,
                                         recompute=cfg.grad_ckpt) * tokens
    in_flight = 1.0
    if cfg.pp > 1 and first:
        # 1F1B: stage 0 holds p micro-batches; interleaving adds (p-1)/(p v) (Korthikanti et al. 2022, Sec. 4.2.3)
        in_flight = float(min(cfg.pp, cfg.grad_accum))
        if cfg.pp_schedule is PipeSchedule.interleaved and cfg.virtual_stages > 1:
            in_flight *= 1 + (cfg.pp - 1) / (cfg.pp * cfg.virtual_stages)
    activations = per_layer * sp.trainable_layers * in_flight
    recompute = 0.0
    if cfg.grad_ckpt is GradCkpt.full:
        # backward recomputes one layer at a time: one layer's full activations on top
        recompute = hf_layer_bytes_per_token(m, act_bytes=e, attn=cfg.attn, train=train, seq_len=cfg.seq_len,
                                             t=cfg.tp, sequence_parallel=cfg.sequence_parallel) * tokens
    activations *= cal.activation_multiplier
    recompute *= cal.activation_multiplier
    if sp.has_head and cfg.stage is not Stage.rm:
        # with the final norm's saved input (RMSNorm: its fp32 upcast, 4h), freed with the head's buffers
        final_norm = (e if m.layernorm_bias else 4) * m.hidden_size / (cfg.tp if cfg.sequence_parallel else 1)
        items["logits and loss"] = (logits_bytes_per_token(m, act_bytes=e, t=cfg.tp) + final_norm) * tokens
        if cfg.stage is Stage.dpo:  # TRL's chunked log-prob head instead of logits + cross-entropy
            items["logits and loss"] = final_norm * tokens + trl_logprob_head_bytes(
                m, tokens=tokens, compute_bytes=e, triton=gpu.name != "CPU", t=cfg.tp,
                head_trains=cfg.method is Method.full and sp.trainable > 0)
    # The last layer is recomputed only after the loss and LM-head backward have freed the logits buffers,
    # so the recomputed layer and "logits and loss" are never live together: the backward peak holds the
    # larger of the two (seen in the profiler's dry run of Llama-2-7B with checkpointing).
    if recompute > items.get("logits and loss", 0.0):
        activations += recompute
        items.pop("logits and loss", None)
    if mixed and not ds_engine and cfg.method is Method.full:
        # autocast caches a 16-bit copy of every fp32 weight it casts; backward keeps them
        items["autocast weight copies"] = 2.0 * sp.trainable / (n if fsdp_sharded else 1)
        if fsdp_sharded:
            items.pop("autocast weight copies")  # FSDP's MixedPrecision casts per unit instead
    if cfg.quant is not Quant.none:
        biggest = max(lin.in_features * lin.out_features for lin in m.linears() if lin.copies == 1)
        items["dequantized weight"] = 2.0 * biggest / cfg.tp  # bitsandbytes dequantizes one linear at a time

    # framework buffers
    layer16 = c16 * layer_params(m) / cfg.tp
    if engine is Engine.ddp and cfg.dp > 1:
        # DDP buckets hold a flat copy of every gradient (gradient_as_bucket_view=False, the default)
        items["DDP gradient buckets"] = t_params * grad_bytes
    elif ds_engine and zero in (ZeroStage.OPTIMIZER_STATES, ZeroStage.GRADIENTS):
        items["ZeRO buckets (overlap_comm)"] = ds.OVERLAP_COMM_FACTOR * c16 * (
            ds.reduce_bucket_elements(m) + ds.allgather_bucket_elements(m))
    elif ds_engine and zero is ZeroStage.WEIGHTS:
        # the largest module gathered at once: a decoder layer, or the LM head on the last stage (bigger
        # than a layer for large vocabularies: Llama-3-8B's head is 525M parameters, a layer 218M)
        biggest = max(layer_params(m), head_params(m) if sp.has_head else 0) / cfg.tp
        live = min(ds.STAGE3_MAX_LIVE_PARAMETERS, biggest + ds.prefetch_bucket_elements(m))
        items["ZeRO-3 gathered parameters"] = c16 * live
        # from the second step on (the trace is complete) forward keeps what backward reuses soon
        kept = zero3_kept_for_backward_elements(cfg, first=first)
        at_backward = min(sp.total, kept + min(ds.prefetch_bucket_elements(m),
                                               max(0.0, ds.STAGE3_MAX_LIVE_PARAMETERS - kept)))
        if at_backward > live:
            items["ZeRO-3 parameters kept for backward"] = c16 * (at_backward - live)
        # a gradient larger than the bucket is reduced on its own from the full tensor autograd made
        # (stage3.py, reduce_independent_p_g_buckets_and_remove_grads): the LM head's, when it trains; the
        # contiguous_gradients bucket itself is allocated once and stays (stage3.py, _setup_for_real_optimizer:
        # `bucket.buffer = torch.empty(self.reduce_bucket_size, ...)`), so both are live together
        head_grad = head_params(m) / cfg.tp if (sp.has_head and cfg.method is Method.full) else 0.0
        items["ZeRO-3 reduce bucket"] = c16 * (ds.reduce_bucket_elements(m) + head_grad)
    elif fsdp_sharded:
        if cfg.fsdp is FsdpStrategy.shard_grad_op:
            items["FSDP unsharded parameters"] = sixteen_bit_weights
        else:
            # the unit running plus the one prefetched (BACKWARD_PRE), and the root unit (embedding,
            # final norm, head), which FSDP does not reshard between forward and backward
            root = (embedding_params(m) + head_params(m)) / cfg.tp
            items["FSDP unsharded parameters"] = 2 * layer16 + c16 * root
        # one unit's unsharded gradients, and the root unit's LM-head gradient: it is computed first in
        # backward and reduce-scattered only with the root's other gradients (the embedding's) at its end
        items["FSDP unsharded gradients"] = (layer16 + (c16 * head_params(m) / cfg.tp
                                                        if cfg.method is Method.full and sp.has_head else 0.0)
                                             if sp.trainable else 0.0)
    if offload_params and ds_engine:
        items.setdefault("ZeRO-3 gathered parameters", 2.0 * layer_params(m) / cfg.tp)

    # optimizer-step temporaries: torch's foreach AdamW materializes sqrt(exp_avg_sq) for the whole
    # parameter list (torch/optim/adamw.py, _multi_tensor_adamw); DeepSpeed's fused/CPU Adam does not,
    # but ZeRO-3 upcasts a sub-group of gradients to fp32 (stage3.py, sub_group_size).
    step_items: dict[str, float] = {}
    if ds_engine and zero in (ZeroStage.OPTIMIZER_STATES, ZeroStage.GRADIENTS) and not offload_opt and \
            cfg.method is Method.full:
        # ZeRO-1/2 take the gradient norm in fp64, one gradient at a time (stage_1_and_2.py,
        # get_grad_norm_direct: g.to(get_norm_dtype()), float64 wherever the accelerator has it)
        largest = max([embedding_params(m), head_params(m)] + [lin.in_features * lin.out_features
                                                                for lin in m.linears() if lin.copies == 1])
        step_items["ZeRO fp64 gradient-norm copy"] = 8.0 * largest / cfg.tp
    if not offload_opt and cfg.optimizer in (Optimizer.adamw, Optimizer.paged_adamw) and not ds_engine:
        step_items["AdamW foreach temporaries"] = t_params * state_bytes / 2 / (n if fsdp_sharded else 1)

    overhead = gpu.runtime_overhead_bytes
    if cal.overhead_multiplier != 1.0:
        items = {k: v * cal.overhead_multiplier for k, v in items.items()}
        step_items = {k: v * cal.overhead_multiplier for k, v in step_items.items()}
    base = weights + grads + optim
    buffers = sum(v for k, v in items.items() if k not in BACKWARD_ONLY_ITEMS)
    transient = sum(v for k, v in items.items() if k in BACKWARD_ONLY_ITEMS)
    # phase "backward": with accumulation, the gradients of earlier micro-batches are resident
    grads_in_backward = grads if (cfg.grad_accum > 1 or ds_engine or fsdp_sharded) else 0.0
    phase_a = base - grads + grads_in_backward + activations + buffers + transient
    phase_b = base + buffers
    phase_c = base + buffers + sum(step_items.values())
    reserve = gpu.allocator_reserve_fraction
    phase, peak = max((("backward", phase_a), ("gradients", phase_b), ("optimizer", phase_c)), key=lambda x: x[1])
    if phase == "backward":
        other_items = dict(items)
        grads_shown, acts = grads_in_backward, activations
    else:
        other_items = {k: v for k, v in items.items() if k not in BACKWARD_ONLY_ITEMS}
        if phase == "optimizer":
            other_items.update(step_items)
        grads_shown, acts = grads, 0.0
    other_items["CUDA context and workspaces"] = float(overhead)
    other_items["allocator reserve"] = reserve * peak
    other = sum(other_items.values())

    ranks_per_node = cfg.cluster.gpus_per_node
    offloaded = (host_weights + host_grads + host_optim) * ranks_per_node
    nvme = 0.0
    host = 0.0
    if cfg.offload_device is OffloadDevice.nvme:
        nvme = (host_optim + (host_weights if offload_params else 0.0)) * ranks_per_node
        host = offloaded - nvme
    else:
        host = offloaded
    return MemoryBreakdown(weights=weights, gradients=grads_shown, optimizer=optim, activations=acts,
                           other=other, phase=phase, other_items=other_items, host_bytes=host, nvme_bytes=nvme)
