"""DeepSpeed ZeRO-0/1/2/3 (Rajbhandari et al. 2020), with CPU/NVMe offload (ZeRO-Offload, ZeRO-Infinity),
AutoTP and the pipeline engine.

ZeRO stage 1/2/3 partitions optimizer states / gradients / weights over the data-parallel group.
DeepSpeed keeps 16-bit weights on the GPU (the fp32 master lives in the optimizer). Backward leaves 16-bit
gradients; the fp32 gradient partition the optimizer reads exists only inside step(), one parameter group
(ZeRO-1/2) or sub-group (ZeRO-3) at a time (step_items). Its estimator's 2P + 18P/N for ZeRO-2 (stage_1_and_2.py,
estimate_zero2_model_states_mem_needs) counts that partition as resident: a bound, not the peak.
Buffer sizes are those the emitted ds_config uses (planner.deepspeed_sizes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from planner import collectives as col
from planner import deepspeed_sizes as ds
from planner.choices import (
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
    ZeroStage,
)
from planner.comm import Group, allgather_time_s, allreduce_time_s, split_time_s
from planner.deepspeed_sizes import reduce_bucket_elements
from planner.engines.sharded import backward_chain_s, no_overlap, overlap_for, sharded_comm, sync_calls_s
from planner.gpus import is_cpu
from planner.params import adapted_linears, embedding_params, layer_params, lora_tensor_elements
from planner.states import (
    StageParams,
    compute_copy_bytes,
    final_norm_params,
    head_weight_params,
    is_mixed,
    output_params,
    score_params,
    stage_layers,
    stage_params,
)
from planner.torch_adamw import (
    AdamwKernel,
    deepspeed_client_kernel,
    largest_trainable_tensors,
    single_tensor_temporary_bytes,
    step_temporaries,
)

if TYPE_CHECKING:
    from planner.model_layers import LayerKind
    from planner.strategy import TrainConfig

_CPU, _NVME, _NONE = OffloadDevice.cpu, OffloadDevice.nvme, Offload.none
ROWS = tuple((Engine.deepspeed, zero, FsdpStrategy.full_shard, offload, device) for zero, offload, device in (
    (ZeroStage.DISABLED, _NONE, _CPU),
    (ZeroStage.OPTIMIZER_STATES, _NONE, _CPU),
    (ZeroStage.OPTIMIZER_STATES, Offload.optimizer, _CPU),
    (ZeroStage.GRADIENTS, _NONE, _CPU),
    (ZeroStage.GRADIENTS, Offload.optimizer, _CPU),
    (ZeroStage.WEIGHTS, _NONE, _CPU),
    (ZeroStage.WEIGHTS, Offload.optimizer, _CPU),
    (ZeroStage.WEIGHTS, Offload.all, _CPU),
    (ZeroStage.WEIGHTS, Offload.optimizer, _NVME),
    (ZeroStage.WEIGHTS, Offload.all, _NVME),
))


def problems(cfg: TrainConfig) -> list[str]:
    out = []
    if cfg.tp > 1 and cfg.zero >= ZeroStage.WEIGHTS:
        # DeepSpeed AutoTP training (tensor_parallel.autotp_size, DeepSpeed >= 0.16.4) composes with
        # ZeRO-0/1/2; ZeRO-3 partitions the same weights again (DeepSpeed AutoTP training tutorial)
        out.append("DeepSpeed AutoTP training supports ZeRO-0/1/2, not ZeRO-3")
    if cfg.pp > 1 and cfg.zero >= ZeroStage.GRADIENTS:
        out.append("DeepSpeed's pipeline engine supports ZeRO-0/1 only, not ZeRO-2/3")
    if cfg.precision is Precision.bf16_true:
        out.append("DeepSpeed keeps fp32 master weights: use bf16-mixed (or DDP/FSDP for bf16-true)")
    if cfg.offload is not Offload.none and cfg.optimizer is not Optimizer.adamw:
        out.append("offloaded optimizer runs DeepSpeed's CPU Adam: use --optimizer adamw")
    if cfg.optimizer in (Optimizer.paged_adamw, Optimizer.paged_adamw_8bit) and cfg.zero >= ZeroStage.WEIGHTS:
        out.append("paged optimizers need whole tensors on the GPU, not ZeRO-3 partitions")
    if cfg.method is Method.qlora and cfg.zero is ZeroStage.WEIGHTS and cfg.quant is not Quant.nf4:
        out.append("QLoRA with ZeRO-3 needs nf4 with bnb_4bit_quant_storage (int8 cannot be sharded)")
    return out


# --- memory -------------------------------------------------------------------------------------

def weight_bytes_per_param(cfg: TrainConfig) -> tuple[float, float]:
    """(trainable, frozen): 16-bit copies (the fp32 master lives in the optimizer), fp32 in a 32-true run.
    --frozen-fp32 changes nothing here: DeepSpeed casts the module's parameters to its bf16/fp16 dtype
    (runtime/engine.py _configure_distributed_model), and zero.Init creates them in it (runtime/zero/
    partition_parameters.py _set_dtype and the tensor-creation wrappers)."""
    return (4.0, 4.0) if cfg.precision is Precision.fp32 else (2.0, 2.0)


def shards_weights(cfg: TrainConfig) -> bool:
    return cfg.zero >= ZeroStage.WEIGHTS


def _fp32_grad_bytes(cfg: TrainConfig) -> float:
    return 4.0 if is_mixed(cfg.precision) else 0.0


def gradients(cfg: TrainConfig, trained: float, n: int) -> tuple[float, float]:
    """(GPU, host) bytes of the gradients held from backward to the step. ZeRO-0 holds the model's gradients, whole: in
    bf16 or fp16 FP16_UnfusedOptimizer makes their fp32 copies only inside its step (zero0_step_items); the pipeline
    engine's BF16_Optimizer (bf16 with --pp > 1: bf16_pipeline_optimizer) adds its gradient accumulators, whole and in
    BF16_ACCUMULATOR_BYTES, beside the 16-bit gradients. ZeRO-1/2/3 hold only the 16-bit gradients: whole at
    ZeRO-1 while micro-batches accumulate (param.grad; zero1_holds_whole_grads), else a partition, as at ZeRO-2
    (copy_grads_in_partition's flat buffer) and ZeRO-3 (grad_partitions_flat_buffer); the fp32 partition is made
    in step() (step_items)."""
    zero, c16 = cfg.zero, compute_copy_bytes(cfg.precision)
    if zero is ZeroStage.DISABLED:
        grads = trained * (c16 + (BF16_ACCUMULATOR_BYTES if bf16_pipeline_optimizer(cfg) else 0.0))
    elif zero is ZeroStage.OPTIMIZER_STATES and zero1_holds_whole_grads(cfg):
        grads = trained * c16
    else:
        grads = trained * c16 / n
    if cfg.offload is not Offload.none and zero >= ZeroStage.OPTIMIZER_STATES:
        # gradients stream to pinned host buffers partition by partition (ZeRO-Offload): the fp32
        # partition, plus ZeRO-1/2's 16-bit CPU accumulation buffers only when several micro-batches
        # accumulate (stage_1_and_2.py, copy_grads_in_partition -> async_accumulate_grad_in_cpu_via_gpu);
        # ZeRO-3 keeps its 16-bit gradient partition on the host either way (stage3.py).
        # The fp32 gradient partition the offloaded optimizer reads is allocated up front in every precision
        # (stage3.py `initialize_optimizer_states`: `subgroup_gradient_buffer = torch.zeros(num_elements,
        # dtype=gradient_dtype)`, the fp32 partition's dtype; stage_1_and_2.py pins a zeros buffer for
        # `single_partition_of_fp32_groups[i].grad`): measured on 2 CPU ranks with fp32 weights
        # (tests/validation/test_memory_sharded_measured.py).
        host_16bit = c16 if (zero is ZeroStage.WEIGHTS or cfg.grad_accum > 1) else 0.0
        host = trained * (host_16bit + 4.0) / n
        return (trained * 2 if zero is ZeroStage.OPTIMIZER_STATES else 0.0), host
    return grads, 0.0


def zero1_holds_whole_grads(cfg: TrainConfig) -> bool:
    """ZeRO-1 keeps every 16-bit gradient whole (param.grad) while micro-batches accumulate: it reduces only at the
    accumulation boundary (stage_1_and_2.py `reduce_ready_partitions_and_remove_grads`: stage 1 reduces only
    `is_gradient_accumulation_boundary`), so a boundary backward starts with them all. With one micro-batch per step
    every backward is a boundary: under ftplan's ds_config (overlap_comm, contiguous_gradients) it reduces bucket by
    bucket as ZeRO-2 does and keeps only this rank's partition (`reduce_ipg_grads`' stage-1 branch copies it into
    grads_in_partition; `_release_ipg_buffers` and `_clear_param_grad_only` drop the rest). Measured on 2 CPU ranks
    (tests/validation/test_memory_zero_adamw_step_measured.py, one micro-batch): one partition at the end of backward,
    7,377,920 B in fp32 for the 3.7M Llama, where whole gradients were 14,754,816 B."""
    return cfg.grad_accum > 1


def backward_grad_bytes(cfg: TrainConfig, trained: float, held_grads: float) -> float:
    """Gradient bytes resident when a micro-batch's backward starts: all the gradients held, which DeepSpeed
    allocates up front."""
    return held_grads


def master_bytes(cfg: TrainConfig) -> float:
    """The fp32 master copy. ZeRO-1/2 clone the fp32 partition even when the weights already are fp32
    (stage_1_and_2.py: single_partition_of_fp32_groups = bit16 partition .detach().clone()). ZeRO-3 does
    too: stage3.py `_create_fp32_partitions` reuses the partition only if its dtype matches and
    `partition.device == self.device`, but self.device is the accelerator's device *name*, a str ('cuda:0',
    'cpu': accelerator/*_accelerator.py, current_device_name), and torch.device == str is False, so it takes
    the `.to(...).clone()` branch on every device (DeepSpeed 0.19.8; measured: a second fp32 partition)."""
    fp32_clone = cfg.precision is Precision.fp32 and cfg.zero >= ZeroStage.OPTIMIZER_STATES
    return 4.0 if (is_mixed(cfg.precision) or fp32_clone) else 0.0


def shards_optimizer(cfg: TrainConfig) -> bool:
    """ZeRO-1+; and the pipeline engine's BF16_Optimizer at ZeRO-0 (bf16_pipeline_optimizer), which splits the fp32
    master and the client's states over the stage's data-parallel group (bf16_optimizer.py `_setup_for_real_optimizer`:
    fp32_groups_flat_partition, one partition of each group's flat bf16 copy per rank of `real_dp_process_group`; the
    pipeline engine's data-parallel group, the ranks of one stage: runtime/pipe/topology.py PipelineParallelGrid,
    which deepspeed.utils.groups `_get_data_parallel_group` returns through the engine's mpu) and keeps the gradients
    whole (gradients())."""
    return cfg.zero >= ZeroStage.OPTIMIZER_STATES or bf16_pipeline_optimizer(cfg)


def bf16_pipeline_optimizer(cfg: TrainConfig) -> bool:
    """Whether DeepSpeed wraps the client optimizer in BF16_Optimizer: ZeRO off, bf16, and the pipeline engine
    (runtime/engine.py `_do_optimizer_sanity_check`: with ZeRO disabled and the model's dtype equal to grad_accum_dtype,
    bf16 under `pipeline_parallelism` returns BFLOAT16 -> `_configure_bf16_optimizer`; without the pipeline it is
    DDP_BFLOAT16, FP16_UnfusedOptimizer: zero0_step_items). ftplan's ds_config sets no `data_types.grad_accum_dtype`,
    so the two dtypes are equal (BF16_ACCUMULATOR_BYTES); bf16-true is refused for DeepSpeed (problems)."""
    return cfg.zero is ZeroStage.DISABLED and cfg.pp > 1 and cfg.precision is Precision.bf16_mixed


# BF16_Optimizer's gradient accumulators, bytes per element: one flat buffer per parameter group as large as the group's
# flat bf16 copy, on every rank (bf16_optimizer.py `_setup_for_real_optimizer`: `fp32_groups_gradients_flat` is
# `torch.zeros_like(self.bf16_groups_flat[i], dtype=self.grad_acc_dtype)`), in the engine's grad_accum_dtype
# (engine.py `_configure_bf16_optimizer`: `grad_acc_dtype=self.get_data_types()[1]`), which `get_data_types` makes the
# model's dtype when the ds_config sets no `data_types.grad_accum_dtype` - ftplan's sets none (planner/configs/
# ds_config.py build_ds_config): bf16, whatever the attribute's name says (and the pipe engine's comment "BF16 Optimizer
# is hardcoded for fp32 gradient accumulation", runtime/pipe/engine.py). Backward keeps each parameter's bf16 `.grad`
# beside them: `update_hp_grads(clear_lp_grads=False)` adds it in, `clear_lp_grads` zeroes it in place, and only the
# step's `zero_grad` (set_to_none) frees it. Measured on 2 CPU ranks, pp 2 (tests/validation/
# test_memory_pipeline_step_measured.py): torch.bfloat16, 2 bytes per trained element of the stage.
BF16_ACCUMULATOR_BYTES = 2.0


def autocast_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    return {}  # DeepSpeed runs the module in 16 bits itself: no autocast cache


def zero3_kept_for_backward_elements(cfg: TrainConfig, sp: StageParams) -> float:
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
    The modules after the last layer are the stage's output (planner.states.output_params): the final norm and the LM
    head, or a reward model's 1-output `score` (transformers' GenericForSequenceClassification has no lm_head).
    """
    m, t = cfg.model, cfg.tp
    forward = ([embedding_params(m) / t] if sp.has_embedding else []) + [layer_params(m) / t] * sp.layers + (
        [output_params(m, cfg.stage) / t] if sp.has_head else [])
    kept, after = 0.0, 0.0
    for numel in reversed(forward):
        if 2 * after < ds.STAGE3_MAX_REUSE_DISTANCE:
            kept += numel
        after += numel
    return kept


def zero3_persistent_elements(cfg: TrainConfig, sp: StageParams) -> float:
    """Elements ZeRO-3 keeps whole on every rank: parameters with fewer elements than
    stage3_param_persistence_threshold (10 h with the Trainer's "auto", transformers/integrations/deepspeed.py)
    are gathered once and never released (partition_parameters.py `_convert_to_deepspeed_param`: `ds_persist`
    when `numel <= param_persistence_threshold`; partitioned_param_coordinator.py keeps `ds_persist` params
    AVAILABLE). That is every norm weight, the attention biases, and LoRA's A and B matrices while r x width
    stays under the threshold (r <= 9 for square linears), each in the share of the layers that hold it; a fused
    expert tensor's bias and LoRA matrices are one tensor over all its experts (planner.params
    lora_tensor_elements), which the threshold compares whole. A reward model's `score` (h x num_labels: transformers'
    GenericForSequenceClassification) lies under the threshold too, and under LoRA so does peft's trained copy of it
    (modules_to_save). Per tensor-parallel rank, this stage's layers."""
    from planner.params import norm_params

    m, threshold = cfg.model, ds.param_persistence_threshold(cfg.model)
    per_layer = 2 * norm_params(m) if norm_params(m) <= threshold else 0
    for lin in m.linears():  # each in the share of the layers that hold it
        bias = lin.copies * lin.out_features  # a fused tensor's bias is one (experts x out) tensor (gpt-oss)
        if lin.bias and bias <= threshold:
            per_layer += lin.layer_share * bias
    if cfg.trains_adapter:
        for lin in adapted_linears(m, cfg.lora_targets):  # a fused tensor's A and B hold every expert's rows
            per_layer += lin.layer_share * sum(n for n in lora_tensor_elements(lin, cfg.lora_r) if n <= threshold)
    final_norm = norm_params(m) if sp.has_head and norm_params(m) <= threshold else 0
    score = score_params(m, cfg.stage) if sp.has_head else 0
    if score > threshold:
        score = 0
    elif cfg.trains_adapter:  # peft's trained copy beside the frozen original (modules_to_save)
        score *= 2
    return (per_layer * sp.layers + final_norm + score) / cfg.tp


def _zero3_buffers(cfg: TrainConfig, sp: StageParams, c16: float) -> dict[str, float]:
    m, items = cfg.model, {}
    n = cfg.dp
    persistent = zero3_persistent_elements(cfg, sp)
    if persistent and n > 1:
        # whole on every rank where the weights count 1/n of them
        items["ZeRO-3 persistent parameters"] = c16 * persistent * (1.0 - 1.0 / n)
    # the largest module gathered at once (zero3_largest_gathered_elements): a decoder layer, the input embedding or
    # the LM head (bigger than a layer for large vocabularies: Llama-3-8B's head is 525M parameters, a layer 218M)
    biggest = zero3_largest_gathered_elements(cfg, sp)
    # stage3_max_live_parameters stops prefetching (`__max_n_available_params`), not the module's own fetch
    live = max(biggest, min(ds.STAGE3_MAX_LIVE_PARAMETERS, biggest + ds.prefetch_bucket_elements(m)))
    items["ZeRO-3 gathered parameters"] = c16 * live
    # from the second step on (the trace is complete) forward keeps what backward reuses soon
    kept = zero3_kept_for_backward_elements(cfg, sp)
    at_backward = min(sp.total, kept + min(ds.prefetch_bucket_elements(m),
                                           max(0.0, ds.STAGE3_MAX_LIVE_PARAMETERS - kept)))
    if at_backward > live:
        items["ZeRO-3 parameters kept for backward"] = c16 * (at_backward - live)
    # the contiguous_gradients bucket is allocated once and stays (stage3.py, _setup_for_real_optimizer:
    # `bucket.buffer = torch.empty(self.reduce_bucket_size, ...)`); a gradient larger than it is reduced on its own
    # from the full tensor autograd made, live beside it: the LM head's in backward (zero3_head_gradient_elements), the
    # embedding's at its end (end_items)
    items["ZeRO-3 reduce bucket"] = c16 * ds.reduce_bucket_elements(m)
    head_grad = zero3_head_gradient_elements(cfg, sp)
    if head_grad:
        items[ZERO3_HEAD_GRADIENT] = c16 * head_grad
    return items


def zero3_largest_gathered_elements(cfg: TrainConfig, sp: StageParams) -> float:
    """Elements per tensor-parallel rank of the largest module ZeRO-3 gathers whole at once (each module's own
    parameters, fetched by its pre-forward hook: parameter_offload.py `pre_sub_module_forward_function` ->
    partitioned_param_coordinator.py `fetch_sub_module`): a decoder layer (counted whole), the input embedding
    (`embed_tokens`, V x H, whatever the head), or what follows the last layer (planner.states.output_params): the
    final norm and an untied LM head, or a reward model's `score` (h x num_labels: transformers'
    GenericForSequenceClassification has no lm_head, so its embedding is its only V x H module). A tied LM head is
    the embedding's table, gathered again at the head."""
    m = cfg.model
    table = m.vocab_size * m.hidden_size
    embedding = table if sp.has_embedding else 0
    output = 0
    if sp.has_head:
        tied_head = m.tie_embeddings and head_weight_params(m, cfg.stage) == 0  # an LM head that is the table
        output = output_params(m, cfg.stage) + (table if tied_head else 0)
    return max(layer_params(m), embedding, output) / cfg.tp


# A backward-only item (planner.memory BACKWARD_ONLY_ITEMS): the LM head's gradient, freed once reduced
ZERO3_HEAD_GRADIENT = "ZeRO-3 LM head gradient, reduced alone"


def zero3_head_gradient_elements(cfg: TrainConfig, sp: StageParams) -> float:
    """Elements per tensor-parallel rank of the LM head's gradient ZeRO-3 reduces on its own, in backward: a gradient of
    more elements than reduce_bucket_size skips the bucket and is reduced from the full tensor autograd made
    (stage3.py `reduce_independent_p_g_buckets_and_remove_grads`, `__add_grad_to_ipg_bucket` copies only what fits),
    then freed; a full fine-tune's untied head (with the final norm, as before) is the first gradient of backward,
    live with its activations. A reward model's `score` (h x num_labels: transformers'
    GenericForSequenceClassification, no LM head) fits the bucket. Measured with a reward model (tests/validation/
    test_memory_sharded_measured.py zero3-rm): the step holds no gradient beside the bucket."""
    if cfg.method is not Method.full or cfg.stage is Stage.rm or not sp.has_head:
        return 0.0
    head = output_params(cfg.model, cfg.stage) / cfg.tp
    return head if head > ds.reduce_bucket_elements(cfg.model) else 0.0  # a tied head's final norm fits the bucket


def zero3_embedding_gradient_elements(cfg: TrainConfig, sp: StageParams) -> float:
    """Elements per tensor-parallel rank of the input embedding's gradient ZeRO-3 reduces on its own at the end of
    backward (the last gradient autograd makes; larger than reduce_bucket_size, as zero3_head_gradient_elements): a
    full fine-tune's, unless --freeze-layers freezes it; a reward model's too, its only V x H tensor. A tied language
    model's embedding gradient is planner.memory.tied_embedding_items'."""
    m = cfg.model
    if cfg.method is not Method.full or not sp.has_embedding or cfg.freeze_layers:
        return 0.0
    if m.tie_embeddings and cfg.stage is not Stage.rm:
        return 0.0
    return m.vocab_size * m.hidden_size / cfg.tp


def buffers(cfg: TrainConfig, sp: StageParams, trained: float, *, first: bool) -> dict[str, float]:
    """ZeRO-1/2's gradient buckets; ZeRO-3's gathered parameters, persistent parameters and reduce bucket.

    ZeRO-1/2 with contiguous_gradients copy each gradient into a bucket of reduce_bucket_size elements in the
    16-bit dtype, two of them with overlap_comm ("double buffers to avoid data access conflict":
    stage_1_and_2.py `setup_buckets`, buf_0 and buf_1; the dtype is the model's unless grad_accum_dtype differs,
    `_gradient_reduction_buffer_dtype`); the updated 16-bit partitions are all-gathered into the flat buffer
    in place (runtime/utils.py `all_gather_dp_groups`), so allgather_bucket_size allocates nothing. (DeepSpeed's
    docs' "4.5x the bucket sizes" for overlap_comm is not what 0.19.8 allocates.)"""
    c16 = compute_copy_bytes(cfg.precision)
    if cfg.zero in (ZeroStage.OPTIMIZER_STATES, ZeroStage.GRADIENTS):
        buckets = 2 if ds.overlap_comm() else 1
        return {"ZeRO buckets (overlap_comm)": buckets * c16 * ds.reduce_bucket_elements(cfg.model)}
    if cfg.zero is ZeroStage.WEIGHTS:
        return _zero3_buffers(cfg, sp, c16)
    return {}


def _decay_group_tensor_elements(cfg: TrainConfig) -> list[float]:
    """A full fine-tune's weight matrices in registration order (embedding, each layer's linears, LM head), per
    tensor-parallel rank: nearly all of the largest parameter group (the Trainer's weight-decay group,
    get_decay_parameter_names, leaves out only biases and norms; an optimizer built by DeepSpeed from the
    ds_config gets one group). An MoE layer's experts count as one fused tensor. A model whose layers differ holds
    each kind's own linears in its layers (DeepSeek-V3: 3 dense layers, then 58 with experts), the kinds in the
    order of their first layer (exact where each kind's layers are contiguous or the kinds share their linears).
    A reward model's weight-decay group ends in its `score`, h x num_labels."""
    m, t = cfg.model, cfg.tp
    matrix = m.vocab_size * m.hidden_size / t
    kinds = sorted(m.layer_kinds, key=lambda k: k.first) or None
    layers = [x for kind in kinds for x in [lin.copies * lin.in_features * lin.out_features / t
                                             for lin in kind.linears] * kind.count] if kinds else \
        [lin.copies * lin.in_features * lin.out_features / t for lin in m.linears()] * m.num_layers
    # then what follows the last layer (planner.states.head_weight_params): an untied LM head, or a reward model's
    # `score` (h x num_labels, transformers' GenericForSequenceClassification: no V x H head), none when tied
    head = head_weight_params(m, cfg.stage) / t
    return [matrix] + layers + ([head] if head else [])


def zero3_sub_group_elements(cfg: TrainConfig, trained: float, n: int) -> tuple[float, ...]:
    """ZeRO-3's sub-groups on a rank, partition elements each, in order: each parameter group split greedily in
    parameter order, a sub-group closed when its partition elements reach sub_group_size or at the group's last
    parameter (stage3.py, `_create_fp16_sub_groups`; a group no larger than sub_group_size stays whole). A full
    fine-tune's weight matrices make the weight-decay group (_decay_group_tensor_elements); what the trained partition
    holds beyond them (norms and biases: the Trainer's no-decay group) closes the list. A stage or frozen layers that
    leave fewer trained elements than the matrices cut the list at the trained partition."""
    whole = trained / n
    if cfg.method is not Method.full or whole <= ds.SUB_GROUP_SIZE:
        return (whole,)
    groups: list[float] = []
    current = 0.0
    for numel in _decay_group_tensor_elements(cfg):
        current += math.ceil(numel / n)  # partition_numel: ceil(numel / world size), padded
        if current >= ds.SUB_GROUP_SIZE:
            groups.append(current)
            current = 0.0
    groups.append(current)
    out: list[float] = []
    for size in groups:
        size = min(size, whole - sum(out))
        if size > 0:
            out.append(size)
    rest = whole - sum(out)
    return tuple(out + ([rest] if rest > 0 else []))


def step_group_elements(cfg: TrainConfig, trained: float, n: int) -> float:
    """Elements per GPU of the largest group whose gradients step() converts to fp32 at once.

    ZeRO-1/2 convert a whole parameter group's partition (stage_1_and_2.py, step: the loop over bit16_groups);
    the weight-decay group holds nearly every trained parameter. ZeRO-3 converts one sub-group at a time
    (zero3_sub_group_elements; stage3.py _prepare_sub_group ... _release_sub_group)."""
    if cfg.zero is not ZeroStage.WEIGHTS:
        return trained / n
    return max(zero3_sub_group_elements(cfg, trained, n))


# runtime/engine.py MEMORY_OPT_ALLREDUCE_SIZE: the elements past which ZeRO-0's gradient all-reduce closes a bucket, at
# pp 1 (`allreduce_gradients`' default bucket_size, which `_backward_epilogue` passes unchanged: the ds_config's
# reduce_bucket_size / allreduce_bucket_size is not read on this path) and in the pipeline engine
# (runtime/pipe/engine.py `_exec_reduce_grads` and `_bf16_reduce_grads` pass it as elements_per_buffer)
ALLREDUCE_BUCKET_ELEMENTS = 500_000_000


def end_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """At the end of backward: ZeRO-0's gradient all-reduce (zero0_reduce_copy_bytes); ZeRO-3's embedding gradient,
    reduced alone (zero3_embedding_gradient_elements); ZeRO-1/2's reductions are their buckets, counted in buffers.
    Measured with a reward model (tests/validation/test_memory_sharded_measured.py zero3-rm)."""
    if cfg.zero is ZeroStage.WEIGHTS:
        return zero3_embedding_reduction_items(cfg, sp)
    copy = zero0_reduce_copy_bytes(cfg, sp)
    return {"ZeRO-0 gradient all-reduce flat copy": copy} if copy else {}


def zero3_embedding_reduction_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """ZeRO-3's end of backward where the input embedding's gradient is reduced alone (zero3_embedding_gradient_
    elements): its gradient, the embedding's table itself, gathered for its backward (the module's pre-backward hook
    fetches it and the post-backward hook releases it, after the gradient hook has reduced: parameter_offload.py
    `pre_sub_module_backward_function` / `post_sub_module_backward_function`), and on the CPU gloo's copy of the
    reduce-scatter's input (as planner.engines.fsdp reduce_scatter_copy_bytes measured: torch's gloo has no in-place
    reduce-scatter; DeepSpeed's `reduce_scatter_coalesced` itself only views a single tensor that divides evenly,
    runtime/comm/coalesced_collectives.py). Measured on 2 CPU ranks with a reward model on a 32000-token vocabulary
    (tests/validation/test_memory_sharded_measured.py zero3-rm): the backward peak is inside the embedding's backward,
    196,608,012 B over the states (3 x 65,536,000, the fp32 table's three copies); the planner 196,608,000."""
    elements = zero3_embedding_gradient_elements(cfg, sp)
    if not elements:
        return {}
    c16 = compute_copy_bytes(cfg.precision)
    items = {"ZeRO-3 embedding gradient, reduced alone": c16 * elements,
             "ZeRO-3 embedding gathered for its backward": c16 * elements}
    if is_cpu(cfg.cluster.gpu):
        items["gloo reduce-scatter copy"] = c16 * elements
    return items


def zero0_reduce_copy_bytes(cfg: TrainConfig, sp: StageParams) -> float:
    """Bytes of the flat copy ZeRO-0's gradient reduction makes once the accumulation boundary's backward is done, at
    any data-parallel size (neither path has a world-size-1 shortcut), with or without a pipeline:
    - pp 1: `DeepSpeedEngine.backward` -> `_backward_epilogue` -> `allreduce_gradients` (runtime/engine.py; only
      `is_gradient_accumulation_boundary`, so one reduction per step, when the gradients are whole) ->
      `buffered_allreduce_fallback(elements_per_buffer=MEMORY_OPT_ALLREDUCE_SIZE)`;
    - pp > 1: the pipeline's ReduceGrads instruction, runtime/pipe/engine.py `_exec_reduce_grads` (or
      `_bf16_reduce_grads`) -> `buffered_allreduce_fallback`, on every stage.
    Then `_reduce_non_expert_gradients` -> `allreduce_no_retain` closes a bucket once its elements pass
    ALLREDUCE_BUCKET_ELEMENTS, and `allreduce_bucket` flattens it into a new tensor (`self.flatten(bucket)`: torch's
    flatten_dense_tensors concatenates, and only views a bucket of one tensor) in the communication dtype, the model's
    (`communication_data_type`: no cast), then copies it back and drops it.
    - BF16_Optimizer (bf16_pipeline_optimizer, pp > 1 only): the buckets are its groups' flat accumulators
      (`get_grads_for_reduction`), BF16_ACCUMULATOR_BYTES each. One group (a LoRA stage: DeepSpeed drops the Trainer's
      empty no-decay group, runtime/engine.py `_configure_optimizer`) is only viewed; a full fine-tune's two groups
      (runner/parallel/pipeline.py pipeline_optimizer, the Trainer's) make one bucket while the weight-decay group
      stays within the size: the stage's accumulators copied whole. That group is `trained` less the stage's norms
      and biases (under 0.1% of it), compared here as `trained`.
    - Otherwise (fp32; bf16 or fp16 under FP16_UnfusedOptimizer, which keeps the 16-bit `.grad`s and has no
      `get_grads_for_reduction`): the parameters' own gradients (`_get_gradients_for_reduction`: `module.parameters()`
      in order, those that require grad), in the compute dtype: the largest bucket of the stage's trained tensors
      (zero0_stage_gradient_elements) walked as `allreduce_no_retain` walks them (largest_flat_copy_elements).
      Llama-2-7B's buckets: 536M elements (the 131M embedding, a layer, most of the next), then 500M to 517M, the last
      626M (the 131M head closes it), against the size plus the largest tensor (631M); Llama-3.1-8B's 525M embedding is
      a bucket of its own, only viewed, and its largest is the last, 962M (not 1,025M).
    Measured, the rise over the reduction's start while it runs (profiler.tracker): on 2 CPU ranks at pp 1, dp 2, the
    3.7M Llama (tests/validation/test_memory_zero_adamw_step_measured.py), 14,754,816 B in fp32 and 7,377,408 B in bf16
    (FP16_UnfusedOptimizer), every gradient once, as planned; at pp 2, dp 1 (tests/validation/
    test_memory_pipeline_step_measured.py), first stage (1,844,224 trained elements): 3,688,448 B in bf16 (the
    Trainer's two groups), 7,376,896 B in fp32, as planned."""
    if cfg.zero is not ZeroStage.DISABLED:
        return 0.0
    trained = sp.trainable
    if bf16_pipeline_optimizer(cfg):
        whole = cfg.method is Method.full and trained <= ALLREDUCE_BUCKET_ELEMENTS
        return trained * BF16_ACCUMULATOR_BYTES if whole else 0.0
    copy = largest_flat_copy_elements(zero0_stage_gradient_elements(cfg, sp), ALLREDUCE_BUCKET_ELEMENTS)
    return min(trained, copy) * compute_copy_bytes(cfg.precision)


def largest_flat_copy_elements(tensors: Iterable[float], bucket_elements: float) -> float:
    """Elements of the largest flat copy DeepSpeed's `allreduce_no_retain` (runtime/engine.py, 0.19.8) makes over
    `tensors`, in their order: it appends each tensor to the bucket and closes the bucket once its elements pass
    `bucket_elements` (`if numel > numel_per_bucket`), the last bucket at the end; `allreduce_bucket` flattens each
    (`_flatten_dense_tensors`: a new tensor of the bucket's elements, a view of a bucket of one tensor)."""
    largest, filled, count = 0.0, 0.0, 0
    for numel in tensors:
        filled, count = filled + numel, count + 1
        if filled > bucket_elements:
            largest = max(largest, filled if count > 1 else 0.0)
            filled, count = 0.0, 0
    return max(largest, filled if count > 1 else 0.0)


def zero0_stage_gradient_elements(cfg: TrainConfig, sp: StageParams) -> tuple[float, ...]:
    """The stage's trained tensors, elements per tensor-parallel rank, in `module.parameters()` order (registration:
    the input embedding, BLOOM's embedding norm and a derived spec's other outside parameters with it; each decoder
    layer's linears (weight, then bias) and norms, then its other parameters; the final norm; the head - the pipeline
    engine's stages keep that order: runner/parallel/pipeline.py pipeline_layers). Full fine-tuning leaves out the
    frozen layers and embedding (--freeze-layers, the first layers, as planner.states.stage_params); LoRA trains A
    then B of each adapted linear (planner.params.lora_tensor_elements). After the last layer: the final norm and the
    head's weight (planner.states.head_weight_params: an untied LM head, V x H, or a reward model's h x num_labels
    `score`), or, under LoRA, the reward model's score alone (peft's modules_to_save copy). A model whose layers
    differ holds its kinds in the order of their first layer, as _decay_group_tensor_elements."""
    m, t, full = cfg.model, cfg.tp, cfg.method is Method.full
    layers_here = sp.layers
    first = cfg.pp == 1 or not sp.has_head
    frozen = min(cfg.freeze_layers, m.num_layers) if full else 0
    frozen_here = min(frozen, layers_here) if first else max(0, frozen - (m.num_layers - layers_here))
    out: list[float] = []
    if full and sp.has_embedding and not frozen:
        out.append(m.vocab_size * m.hidden_size / t)
        if m.embedding_norm:
            out += [float(m.hidden_size)] * (2 if m.layernorm_bias else 1)
        if m.extra_params:
            out.append(float(m.extra_params))
    kinds = [kind for kind in sorted(m.layer_kinds, key=lambda k: k.first) for _ in range(kind.count)]
    index = range(m.num_layers - layers_here, m.num_layers) if not first else range(layers_here)
    for i in index[frozen_here:]:
        out += _layer_trained_elements(cfg, kinds[i] if kinds else None)
    if sp.has_head:
        if full:
            norm = final_norm_params(m)
            tensors = 2 if m.layernorm_bias else 1
            out += [norm / tensors] * tensors if norm else []
            head = head_weight_params(m, cfg.stage) / t
            out += [head] if head else []
        elif cfg.stage is Stage.rm:
            out.append(float(score_params(m, cfg.stage)))
    return tuple(out)


def _layer_trained_elements(cfg: TrainConfig, kind: LayerKind | None) -> list[float]:
    """One decoder layer's trained tensors in registration order, per tensor-parallel rank: a full fine-tune's linears
    (weight, then bias; a fused expert tensor whole), norms and other parameters; LoRA's A and B per adapted linear."""
    m, t = cfg.model, cfg.tp
    linears = kind.linears if kind else m.linears()
    if cfg.method is not Method.full:
        adapted = {lin.name for lin in adapted_linears(m, cfg.lora_targets)}
        return [x / t for lin in linears if lin.name in adapted for x in lora_tensor_elements(lin, cfg.lora_r)]
    out = [x for lin in linears for x in
           ((lin.copies * lin.in_features * lin.out_features / t,) + ((lin.copies * lin.out_features / t,)
                                                                        if lin.bias else ()))]
    if kind is None:
        return out + [float(m.hidden_size)] * (4 if m.layernorm_bias else 2)
    return out + [float(n.width) for n in kind.norms for _ in range(2 if n.bias else 1)] + \
        [float(p.elements) for p in kind.other_params]


def step_items(cfg: TrainConfig, trained: float, n: int, state_bytes: float, sp: StageParams | None = None
               ) -> dict[str, float]:
    """What the step adds to the gradients held: the largest of three moments, which follow each other.

    - First the gradient norm, taken in fp64 one gradient at a time (stage_1_and_2.py and stage3.py,
      get_grad_norm_direct: g.to(get_norm_dtype()), float64 wherever the accelerator has it); at ZeRO-3 each
      gradient is a partition (1/N of the tensor).
    - Then, per group, the 16-bit gradients are flattened into a new tensor and cast to fp32 while the flat copy lives
      (stage_1_and_2.py step: `self.flatten(...)` then `.to(fp32)`; stage3.py _prepare_fp32_grad_for_sub_group, the same
      line), the fp32 partition stays through the optimizer step and is dropped before the next group
      (`single_partition_of_fp32_groups[i].grad = None`; stage3.py _release_sub_group). ZeRO-1's gradients are counted
      whole with accumulation (gradients()), but by the step only this rank's partition is left, in the contiguous
      buffer (contiguous_partition_freed_bytes): the boundary micro-batch's reduction leaves the others in its buckets
      (`reduce_independent_p_g_buckets_and_remove_grads` points each gradient into a bucket buffer; the epilogue's
      `_release_ipg_buffers` and `_clear_param_grad_only` drop them), and step() frees whatever remains outside the
      partition (free_grad_in_param_list(params_not_in_partition)), so both moments hold c16 x (trained - trained/N)
      less. Measured on 2 CPU ranks (the 3.7M Llama, tests/validation/test_memory_zero_adamw_step_measured.py): ZeRO-1
      holds one gradient partition at the end of backward and rises at the step as ZeRO-2 does, in fp32 and bf16, one
      group and two.
    - Then the client's torch AdamW steps the group beside its fp32 gradient partition, with the temporaries of its
      implementation (_client_adamw_step_bytes); DeepSpeed's own optimizers (FusedAdam, CPU Adam) update in place.
    With offloaded optimizer states the fp32 gradients live on the host (gradients()). ZeRO-0: zero0_step_items.
    `sp`: the pipeline stage (its own tensors: the pipeline engine's optimizer steps the stage's module); None: the
    whole model (pp 1)."""
    if sp is None and cfg.pp > 1:
        raise ValueError("a pipeline stage's step needs its StageParams")
    sp = sp if sp is not None else stage_params(cfg, first=True)
    if cfg.zero is ZeroStage.DISABLED:
        return zero0_step_items(cfg, trained, n, sp)
    if cfg.offload is not Offload.none:
        return {}
    m, c16 = cfg.model, compute_copy_bytes(cfg.precision)
    norm = 0.0
    if cfg.method is Method.full:
        # the stage's tensors outside the layers: the embedding, and its output (planner.states.output_params: the
        # LM head, or a reward model's h x num_labels `score`, transformers' GenericForSequenceClassification)
        outside = [embedding_params(m) if sp.has_embedding else 0, output_params(m, cfg.stage) if sp.has_head else 0]
        largest = max(outside + [lin.in_features * lin.out_features for lin in m.linears() if lin.copies == 1])
        norm = 8.0 * largest / cfg.tp / (n if cfg.zero is ZeroStage.WEIGHTS else 1)
    group = step_group_elements(cfg, trained, n)
    conversion = group * (c16 + _fp32_grad_bytes(cfg))  # the flat 16-bit copy and the fp32 partition
    step = _client_adamw_step_bytes(cfg, group)
    if cfg.zero is ZeroStage.OPTIMIZER_STATES and zero1_holds_whole_grads(cfg):
        conversion -= c16 * (trained - trained / n)
        step -= c16 * (trained - trained / n)
    moments = {"ZeRO fp64 gradient-norm copy": norm,
               "ZeRO fp32 gradients, one group (+ flat copy)": conversion,
               f"ZeRO fp32 gradients + torch AdamW {_kernel_name(cfg)} temporaries, one group": step}
    name, largest = max(moments.items(), key=lambda kv: kv[1])
    return {name: largest} if largest > 0 else {}


def zero0_step_items(cfg: TrainConfig, trained: float, n: int, sp: StageParams) -> dict[str, float]:
    """ZeRO-0's step beyond the gradients held: the client's torch AdamW over whole fp32 tensors, one parameter group
    at a time (torch/optim/adam.py: `step` calls the functional per group), with its implementation's temporaries
    (torch_adamw.step_temporaries: foreach's `exp_avg_sq_sqrt` over the group's list, nearly every trained element in
    the Trainer's weight-decay group; the single-tensor loop's over the largest parameters, single_tensor_temporary_
    bytes). DeepSpeed 0.19.8 wraps the client by precision (runtime/engine.py `_do_optimizer_sanity_check`, ZeRO
    disabled): fp32 steps it as it is; bf16 or fp16 with ftplan's ds_config (no `data_types.grad_accum_dtype`, so
    the accumulation dtype is the model's) is `DDP_BFLOAT16` / `FP16`, and `_configure_fp16_optimizer` wraps a
    client that is not FusedAdam in FP16_UnfusedOptimizer (runtime/fp16/unfused_optimizer.py), whose `step` casts
    every parameter's 16-bit gradient to a new fp32 gradient of its fp32 copy (`fp16_param.grad.to(fp32)`), for all
    groups, before the client's step: 4 bytes per trained parameter more. The pipeline engine wraps the same way, on
    its stage's parameters, except in bf16: BF16_Optimizer (bf16_optimizer_step_items).
    Measured (2 CPU ranks over gloo, profiler.tracker, tests/validation/test_memory_zero_adamw_step_measured.py, the
    3.7M Llama, the Trainer's groups), the step's rise over the end of backward: fp32 foreach 14,745,600 B (the
    weight-decay group's sqrt); bf16 (FP16_UnfusedOptimizer) foreach 29,500,416 B (+ 14,754,816 B of fp32 gradients)
    and single-tensor 17,556,480 B; the end of backward held the 16-bit gradients alone (7,377,408 B in bf16). The
    pipeline in fp32, 2 stages of 1.84M trained elements (tests/validation/test_memory_pipeline_step_measured.py):
    foreach 7,372,800 B on each (planner +0.06%); the single-tensor loop 2,801,664 B on the last stage (2 x the head +
    the down_proj before it) and 2,113,536 B on the first (3 x a down_proj: the stage's own tensors, whose embedding's
    pair is smaller), both as planned (single_tensor_temporary_bytes over the stage: `sp`)."""
    if bf16_pipeline_optimizer(cfg):
        return bf16_optimizer_step_items(cfg, trained, n, sp)
    kernel = deepspeed_client_kernel(cfg)
    fp32_grads = 4.0 * trained if is_mixed(cfg.precision) else 0.0
    if kernel is AdamwKernel.single_tensor:
        temporaries = single_tensor_temporary_bytes(cfg, 4.0, 1, sp)
    else:
        temporaries = step_temporaries(kernel, trained, 0.0) * 4.0
    parts = (["FP16_UnfusedOptimizer fp32 gradients"] if fp32_grads else []) + \
        ([f"torch AdamW {_kernel_name(cfg)} temporaries"] if temporaries else [])
    return {"ZeRO-0 " + " + ".join(parts): fp32_grads + temporaries} if parts else {}


def bf16_optimizer_step_items(cfg: TrainConfig, trained: float, n: int, sp: StageParams) -> dict[str, float]:
    """The pipeline engine's BF16_Optimizer step (runtime/bf16_optimizer.py `step`) beyond the gradients held: the
    larger of two moments, which follow each other.
    - The gradient norm: `get_global_norm_of_tensors` (runtime/utils.py) takes each accumulator's view to fp32 one at
      a time (`tensor.detach().float().norm(norm_type)`): 4 bytes x the largest trained tensor. Clipping scales the
      accumulators in place (`clip_tensors_by_global_norm`).
    - Every group's fp32 gradient partition, made before the client steps (`param_partition.grad =
      grad_partition.to(param_partition.dtype)`, the accumulators being bf16: BF16_ACCUMULATOR_BYTES) and dropped
      after it (`param_partition.grad = None` when grad_acc_dtype is not fp32): 4 bytes x trained / n, beside the
      client's temporaries over its largest group, one flat fp32 partition (torch_adamw.step_temporaries: foreach
      `exp_avg_sq_sqrt`, the single-tensor loop's sqrt and quotient; the Trainer's weight-decay group holds nearly every
      trained element).
    Then `update_lp_params` copies the partition into the flat bf16 weights and all-gathers into them in place
    (runtime/utils.py all_gather_into_tensor_dp_groups; nothing at dp 1), and the engine's `zero_grad` frees the bf16
    `.grad`s. Measured on 2 CPU ranks, pp 2, dp 1, the 3.7M Llama in the Trainer's groups (tests/validation/
    test_memory_pipeline_step_measured.py), the step's rise over its start on the first stage (1,844,224 trained
    elements): 14,749,700 B with foreach, 22,122,500 B with the single-tensor loop (planner +0.03%, +0.04%: the
    weight-decay group leaves out the stage's norms)."""
    kernel = deepspeed_client_kernel(cfg)
    group = trained / n
    step = 4.0 * group + step_temporaries(kernel, group, group) * 4.0
    norm = 4.0 * max(largest_trainable_tensors(cfg.model, cfg.adapter, cfg.stage, has_embedding=sp.has_embedding,
                                               has_head=sp.has_head)) / cfg.tp
    name = "BF16_Optimizer fp32 gradients" + (f" + torch AdamW {_kernel_name(cfg)} temporaries"
                                              if kernel not in (None, AdamwKernel.fused) else "")
    return {name: step} if step >= norm else {"BF16_Optimizer fp32 gradient-norm copy": norm}


def _kernel_name(cfg: TrainConfig) -> str:
    """The client AdamW's implementation as a memory item names it: "foreach", "single-tensor"."""
    kernel = deepspeed_client_kernel(cfg)
    return kernel.value.replace("_", "-") if kernel else "no"


def _client_adamw_step_bytes(cfg: TrainConfig, group: float) -> float:
    """The client torch AdamW's step over one group's flat fp32 partition, with that group's fp32 gradient set.
    Without offload ftplan's ds_config has no optimizer section (planner/configs/ds_config.py needs_ds_optimizer), so
    the Trainer's `adamw_torch` (the profiler's worker builds torch's AdamW likewise, in the Trainer's groups) is the
    optimizer ZeRO steps, one group at a time (stage_1_and_2.py `step` -> `_optimizer_step(i)`; stage3.py per
    sub-group), its implementation the device's (planner/torch_adamw.py deepspeed_client_kernel): on a GPU foreach
    holds one fp32 partition of temporaries (`exp_avg_sq_sqrt`), the CPU's single-tensor loop two (the sqrt and the
    quotient), the fused kernel (--fused-adamw) none (torch_adamw.step_temporaries; a flat partition is one tensor).
    The fp32 gradient is a new partition: `.to(fp32)` of the flat 16-bit gradients, or in fp32 the flat copy itself
    (`self.flatten(self.averaged_gradients[i])` copies the group's gradients into a new tensor, and `.to` of the same
    dtype returns it); less, at ZeRO-1/2, the contiguous gradient partition where the step frees it
    (contiguous_partition_freed_bytes)."""
    kernel = deepspeed_client_kernel(cfg)
    if kernel is None or kernel is AdamwKernel.fused:
        return 0.0
    return group * 4.0 + step_temporaries(kernel, group, group) * 4.0 - contiguous_partition_freed_bytes(cfg, group)


def contiguous_partition_freed_bytes(cfg: TrainConfig, group: float) -> float:
    """Bytes of ZeRO-1/2's contiguous gradient partition freed before the client's step of the largest group.

    ZeRO-2 copies every gradient of this rank's partition into one buffer for all parameter groups
    (stage_1_and_2.py `copy_grads_in_partition`: `self.grads_in_partition`, dropped by `_release_ipg_buffers` at the
    end of backward while each group's `averaged_gradients[i]` (`get_flat_partition` views) still holds it), and so
    does ZeRO-1 with ftplan's `contiguous_gradients: true` (`reduce_ipg_grads`, the "zero stage 1" branch: the
    boundary micro-batch's reduction copies the gradients in this rank's partition there; the others go with the
    buckets). `step` frees a group's views (`free_grad_in_param_list(self.params_in_partition[i])`,
    `averaged_gradients[i] = None`) before `_optimizer_step(i)`, so the buffer goes only when no other group holds
    gradients in it. The Trainer's groups (transformers trainer.py `create_optimizer`, `get_decay_parameter_names`)
    put a full fine-tune's norms (and biases) in a second group stepped after the weight-decay group: the buffer
    stays through the large group's step. A LoRA model's second group is empty, and DeepSpeed drops it
    (runtime/engine.py `_configure_optimizer`: `param_groups[:] = [pg ... if len(pg["params"]) != 0]`): one group,
    whose step frees the buffer.
    Measured (2 CPU ranks over gloo, profiler.tracker, tests/validation/test_memory_zero_adamw_step_measured.py, the
    3.7M Llama): ZeRO-2 in fp32 under the Trainer's groups, the step's rise over the end of backward 14,745,608 B with
    foreach and 22,118,408 B with the single-tensor loop (2 and 3 fp32 partitions of the 1,843,200-element
    weight-decay group; planner 14,754,816 and 22,132,224, +0.06%), as in bf16; with one group 7,377,416 and
    14,493,192 B in fp32, 11,066,120 and 18,312,712 B in bf16: less the contiguous buffer (7,639,040 B in fp32).
    ZeRO-1 measured the same rises in all eight cases, over the same partition held at the end of backward."""
    if cfg.zero not in (ZeroStage.OPTIMIZER_STATES, ZeroStage.GRADIENTS) or cfg.method is Method.full:
        return 0.0
    return group * compute_copy_bytes(cfg.precision)


# --- time ---------------------------------------------------------------------------------------

def reduce_calls(cfg: TrainConfig, layers: int) -> int:
    """Gradient reductions per micro-batch on one stage of `layers` layers, as DeepSpeed fills its reduce buckets
    (planner/collectives.py reduce_bucket_calls): the trained layers' tensors, then the embedding, final norm and
    untied head of a full fine-tune (the embedding frozen with --freeze-layers); a reward model's `score` instead of
    the head, under LoRA too."""
    return sum(n for _, n in reduce_sizes(cfg, layers))


def reduce_sizes(cfg: TrainConfig, layers: int) -> tuple[tuple[float, int], ...]:
    """The reductions of `reduce_calls` as (elements, calls of that size)."""
    m, full = cfg.model, cfg.method is Method.full
    trained = layers - round(min(cfg.freeze_layers, m.num_layers) * layers / m.num_layers) if full else layers
    # after the last layer, the head's weight (planner.states.head_weight_params): an untied LM head, or a reward
    # model's h x num_labels `score` (transformers' GenericForSequenceClassification), which trains under LoRA too
    head = head_weight_params(m, cfg.stage) / cfg.tp
    outside: tuple[float, ...] = (head,) if cfg.stage is Stage.rm else ()
    if full:
        table = m.vocab_size * m.hidden_size / cfg.tp
        outside = ((table,) if not cfg.freeze_layers else ()) + (float(m.hidden_size),) + ((head,) if head else ())
    return col.reduce_bucket_sizes(m, max(0, trained), cfg.method, cfg.lora_r, cfg.lora_targets, cfg.tp,
                                   reduce_bucket_elements(m), outside)


def optimizer_shards(cfg: TrainConfig) -> int:
    return cfg.dp if cfg.zero >= ZeroStage.OPTIMIZER_STATES else 1


def gradient_offloads_per_step(cfg: TrainConfig) -> int:
    """ZeRO-1 keeps whole gradients and offloads once per step; ZeRO-2/3 every micro-batch."""
    return 1 if cfg.zero is ZeroStage.OPTIMIZER_STATES else cfg.grad_accum


# The updated partitions are all-gathered in one call per parameter group: `all_gather_dp_groups` takes
# `all_gather_into_tensor_dp_groups` wherever the backend has all_gather_into_tensor (NCCL, gloo), which ignores
# allgather_bucket_size (runtime/utils.py, DeepSpeed 0.19.8); the Trainer's optimizer has two groups (weight decay
# and not: get_decay_parameter_names), the second holding only norms and biases.
ZERO12_ALLGATHER_CALLS = 2


def dp_comm(cfg: TrainConfig, g: Group, trainable_gpu: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
            comm_eff: float) -> tuple[float, float, float]:
    """(total, exposed) data-parallel seconds per step, and host-link seconds of parameter offload; each
    collective split into the calls DeepSpeed issues (planner/collectives.py)."""
    elem, grad_bytes, sizes, rs_calls = _reductions(cfg, trainable_gpu)
    overlap = overlap_for(cfg)
    if cfg.zero is ZeroStage.DISABLED:
        ar = split_time_s(allreduce_time_s, grad_bytes, rs_calls, g)
        return ar, overlap(ar, bwd_s, ar / max(1, rs_calls)), 0.0
    # without overlap_comm, or over gloo (a synchronous all_reduce / reduce-scatter: sharded.overlap_for), nothing hides
    reduce_overlap = overlap_for(cfg, issued_async=False) if ds.overlap_comm() else no_overlap
    if cfg.zero in (ZeroStage.OPTIMIZER_STATES, ZeroStage.GRADIENTS):
        # ZeRO-1/2 reduce each gradient bucket with one all-reduce of the whole bucket and each rank keeps its own
        # slices: `use_multi_rank_bucket_allreduce` defaults to True (runtime/zero/config.py, since DeepSpeed
        # 0.12.4, #4695), so stage_1_and_2.py `average_tensor` hands every slice to `allreduce_and_scatter` ->
        # `allreduce_bucket` -> dist.all_reduce, not one dist.reduce per destination rank: an all-reduce's bytes
        # (twice a reduce-scatter's) and one call per bucket. Without overlap_comm it runs on the compute stream
        # (`average_tensor`: `stream = ... current_stream()`), after each bucket fills, so none of it hides.
        rs = bucket_allreduces_s(g, sizes, grad_bytes, elem)
        # ZeRO-1 reduces once per step (it keeps whole gradients); ZeRO-2 every micro-batch, since
        # it keeps only its partition; then the updated 16-bit partitions are all-gathered.
        n_rs = 1 if cfg.zero is ZeroStage.OPTIMIZER_STATES else cfg.grad_accum
        ag = split_time_s(allgather_time_s, trainable_gpu * elem, ZERO12_ALLGATHER_CALLS, g)
        copy_in, reduce_side = zero12_bucket_passes_s(cfg, trainable_gpu)
        if cfg.cluster.gpu.overlaps_comm:  # the reduction stream runs the bucket's passes before its all-reduce
            path = rs + reduce_side
            reduce_exposed = reduce_overlap(path, bwd_s, path / max(1, rs_calls))
        else:  # gloo on the compute cores: the passes run between the all-reduces, nothing hides them
            reduce_exposed = reduce_overlap(rs, bwd_s, rs / max(1, rs_calls)) + reduce_side
        # every bucket's all-reduce and the step's gathers are synchronous calls between compute (sharded.overlap_for)
        sync = sync_calls_s(cfg, n_rs * rs_calls + ZERO12_ALLGATHER_CALLS)
        return (n_rs * (rs + copy_in + reduce_side) + ag + sync, n_rs * (copy_in + reduce_exposed) + ag + sync, 0.0)
    modules, gathers = _zero3_gathers(cfg)
    # without overlap_comm ZeRO-3 reduces on the default stream (stage3.py: `reduce_and_partition_stream = ...
    # Stream() if overlap_comm else default_stream()`); its gathers keep their own stream either way
    # the gathers are issued async (partition_parameters.py `_dist_allgather_fn`: async_op=True) and prefetched beside
    # compute once the trace is recorded; the reduce-scatter is synchronous (coalesced_collectives.py)
    return sharded_comm(cfg, g, grad_bytes, param_bytes_gpu, fwd_s, bwd_s, modules, rs_calls, gathers=gathers,
                        rs_overlap=None if ds.overlap_comm() else reduce_overlap, gathers_async=True, rs_async=False)


def reduce_chain_s(cfg: TrainConfig, g: Group, trainable_gpu: float, param_bytes_gpu: float) -> float:
    """Seconds per gradient reduction (gradient_offloads_per_step of them a step) of the backward-side traffic the
    gradients' copies to the host wait behind: DeepSpeed runs each bucket's offload copy on the reduction stream after
    its reduction, one after the other (stage_1_and_2.py `reduce_ipg_grads`: `average_tensor`, then
    `copy_grads_in_partition`; stage3.py `__reduce_and_partition_ipg_grads`: the reduce-scatter, then
    `partition_grads`' copy into the host buffer), so the copies overlap only the backward the reduction leaves.
    ZeRO-1/2: the bucket all-reduces and their reduction-path passes (dp_comm); ZeRO-3: the chain sharded_comm
    overlaps with backward (its gathers and reduce-scatter)."""
    elem, grad_bytes, sizes, rs_calls = _reductions(cfg, trainable_gpu)
    if cfg.zero in (ZeroStage.OPTIMIZER_STATES, ZeroStage.GRADIENTS):
        return bucket_allreduces_s(g, sizes, grad_bytes, elem) + zero12_bucket_passes_s(cfg, trainable_gpu)[1]
    if cfg.zero is ZeroStage.WEIGHTS:
        modules, gathers = _zero3_gathers(cfg)
        return backward_chain_s(g, grad_bytes, param_bytes_gpu, modules, rs_calls, gathers)
    return 0.0


def _reductions(cfg: TrainConfig, trainable_gpu: float) -> tuple[float, float, tuple[tuple[float, int], ...], int]:
    """(bytes per gradient element, gradient bytes, the reductions' (elements, calls) sizes, calls) per micro-batch:
    DeepSpeed reduces in 16 bits (fp32 in a 32-true run), split into the calls reduce_sizes lists."""
    elem = 4.0 if cfg.precision is Precision.fp32 else 2.0
    sizes = reduce_sizes(cfg, stage_layers(cfg.model.num_layers, cfg.pp))
    return elem, trainable_gpu * elem, sizes, sum(n for _, n in sizes)


def _zero3_gathers(cfg: TrainConfig) -> tuple[int, int]:
    """(modules that own parameters, one all-gather each per pass; passes that gather them): forward and backward,
    and the recomputed forward of full checkpointing gathers the released parameters once more."""
    modules = col.param_modules(cfg.model, stage_layers(cfg.model.num_layers, cfg.pp), cfg.method, cfg.lora_targets)
    return modules, 3 if cfg.grad_ckpt is GradCkpt.full else 2


def bucket_allreduces_s(g: Group, sizes: tuple[tuple[float, int], ...], grad_bytes: float, elem_bytes: float
                        ) -> float:
    """ZeRO-1/2's bucket all-reduces per reduction (`sizes`: reduce_sizes): each bucket at its own size where the
    device measured its all-reduce (gloo's time is not linear in the size: planner/gpus.py GPUSpec.allreduce_points;
    the 16.6M benchmark model's buckets are 0.6, 1.6 and 12 MB); elsewhere the time is linear in the size and equal
    calls cost the same."""
    if not g.allreduce_points:
        return split_time_s(allreduce_time_s, grad_bytes, sum(n for _, n in sizes), g)
    total_elements = sum(e * n for e, n in sizes)
    scale = grad_bytes / (elem_bytes * total_elements) if total_elements else 0.0  # the bytes on this rank's stage
    return sum(n * allreduce_time_s(e * elem_bytes * scale, g) for e, n in sizes)


def zero12_bucket_passes_s(cfg: TrainConfig, trainable_gpu: float) -> tuple[float, float]:
    """(compute-stream, reduction-path) seconds per reduction of ZeRO-1/2's own memory passes over the gradients
    (deepspeed/runtime/zero/stage_1_and_2.py, 0.19.8), each a read and a write at the device's elementwise
    bandwidth, in the bucket's dtype:
    - the gradient hook copies each gradient into the contiguous bucket, on the compute stream
      (`reduce_independent_p_g_buckets_and_remove_grads`: `new_grad_tensor.copy_(grad_reduc.view(-1))`);
    - `average_tensor` divides the bucket by the ranks (`tensor.div_`), `allreduce_bucket` flattens the bucket's
      slices into a new tensor before the all-reduce (`self.flatten(bucket)`), and
      `allreduce_and_copy_with_multiple_ranks` copies this rank's slices (1/dp of them) back (`buf.copy_(synced)`)."""
    e = compute_copy_bytes(cfg.precision)
    bw = cfg.cluster.gpu.elementwise_bytes_per_s
    copy_in = 2 * e * trainable_gpu / bw
    reduce_side = (2 * e + 2 * e + 2 * e / max(1, cfg.dp)) * trainable_gpu / bw
    return copy_in, reduce_side


def hook_host_s(cfg: TrainConfig, layers: int) -> float:
    """Per micro-batch: host work of ZeRO-3's hooks on every submodule, on the critical path
    (planner/collectives.py); a recomputed forward runs the forward hooks again (3 passes, not 2). In eager-op
    equivalents: the owners' full fetch / release path, the containers' empty one, the gradient path per trainable
    tensor and per reduce bucket; each at the host's `host_op_s`, or where the device fit measured the hooks (the
    CPU), at the probe's measured time per op-equivalent (a peft model's Dropouts and containers no longer cost an
    owner's gather each: 113 of the benchmark LoRA model's 254 hooked modules)."""
    if cfg.zero is not ZeroStage.WEIGHTS:
        return 0.0
    gpu = cfg.cluster.gpu
    passes = 1.5 if cfg.grad_ckpt is GradCkpt.full else 1.0
    per_op_s = gpu.host_op_s if gpu.zero3_module_host_s is None else \
        gpu.zero3_module_host_s / col.ZERO3_PROBE_OPS_PER_MODULE
    m = cfg.model
    buckets = reduce_calls(cfg, layers)
    grad_path = col.trainable_tensors(m, layers, cfg.method, cfg.lora_targets) * col.ZERO3_GRAD_TENSOR_HOST_OPS + \
        buckets * col.ZERO3_REDUCE_BUCKET_HOST_OPS
    return (col.zero3_host_ops(m, layers, cfg.method, cfg.lora_targets) * passes + grad_path) * per_op_s
