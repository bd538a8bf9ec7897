"""PyTorch FSDP through accelerate's config, FSDP2 by default (FSDP1 with --fsdp-version 1): FULL_SHARD,
SHARD_GRAD_OP, HYBRID_SHARD (shard within a node, replicate across nodes: FSDP1's strategy, FSDP2's `fully_shard`
over a 2-D DeviceMesh (replicate, shard)) and, with FSDP1, NO_SHARD (DDP), with CPU offload of parameters,
gradients and optimizer together (torch.distributed.fsdp.CPUOffload, FSDP2's CPUOffloadPolicy).
One decoder layer per unit (the transformer auto-wrap policy); FSDP1's root unit holds the embedding, final norm and
head, while accelerate's FSDP2 makes the embedding a unit and [final norm, head] another, its units' elements
(fsdp2_traffic.outside_units, which memory and time both read) and collectives counted in
planner/engines/fsdp2_traffic.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner import collectives as col
from planner import parallel_comm as pc
from planner.choices import (
    Engine,
    FsdpStrategy,
    FsdpVersion,
    Method,
    Offload,
    OffloadDevice,
    Quant,
    Stage,
    ZeroStage,
)
from planner.comm import Group, allreduce_time_s, split_time_s
from planner.engines import ddp
from planner.engines.fsdp2_traffic import Calls, fsdp2_traffic, fsdp2_units, is_weights_tied, outside_units
from planner.engines.sharded import PassSeconds, overlap_for, pass_comm, sync_calls_s
from planner.gpus import is_cpu
from planner.memory_knobs import fsdp_quantized_units_bytes
from planner.moe import ep_other_ranks_expert_elements
from planner.params import embedding_params, layer_params, wrapped_lora_targets
from planner.states import (
    StageParams,
    activation_dtype_bytes,
    compute_copy_bytes,
    grad_dtype_bytes,
    output_params,
    score_params,
    stage_layers,
)

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

ROWS = tuple((Engine.fsdp, ZeroStage.DISABLED, strategy, offload, OffloadDevice.cpu) for strategy, offload in (
    (FsdpStrategy.full_shard, Offload.none),
    (FsdpStrategy.full_shard, Offload.all),
    (FsdpStrategy.shard_grad_op, Offload.none),
    (FsdpStrategy.hybrid_shard, Offload.none),
    (FsdpStrategy.no_shard, Offload.none),
))


def problems(cfg: TrainConfig) -> list[str]:
    out = []
    if cfg.pp > 1:
        out.append("pipeline parallelism with FSDP is not supported here (use DeepSpeed ZeRO-1 with PP)")
    if cfg.tp > 1:
        out.append("tensor parallelism with FSDP needs FSDP2 + DTensor, which accelerate's FSDP config does not "
                   "express (use DeepSpeed AutoTP with ZeRO-1/2)")
    if cfg.method is Method.qlora and cfg.quant is not Quant.nf4:
        out.append("QLoRA with FSDP needs nf4 with bnb_4bit_quant_storage (int8 cannot be sharded)")
    if cfg.fsdp_version is FsdpVersion.TWO and cfg.fsdp is FsdpStrategy.no_shard:
        # accelerate's FSDP2 plugin takes reshard_after_forward (a bool) only; the Trainer raises for the
        # other strategies (transformers/training_args.py, _apply_legacy_fsdp_to_config). Hybrid sharding is
        # FSDP2's 2-D device mesh instead (accelerate's parallelism_config, planner/configs/accelerate_config.py)
        out.append(f"FSDP2 shards fully, per step, or hybrid over a 2-D mesh; {cfg.fsdp.value} needs --fsdp-version 1")
    if cfg.fsdp is FsdpStrategy.hybrid_shard and cfg.cluster.nodes == 1:
        out.append("hybrid_shard shards within a node and replicates across nodes: it needs several nodes")
    wrapped = fsdp1_wrapped_lora_problem(cfg)
    if wrapped:
        out.append(wrapped)
    return out


def fsdp1_wrapped_lora_problem(cfg: TrainConfig) -> str | None:
    """FSDP1 cannot train LoRA on targets peft adapts as parameters (fused MoE experts, routers that are not
    nn.Linear: planner.params.wrapped_lora_targets). peft's ParamWrapper reads its lora_A / lora_B weights without
    calling those modules and lays W + B A over the base tensor with torch's parametrization (peft/tuners/lora/
    layer.py ParamWrapper._activate_lora, torch/nn/utils/parametrize.py register_parametrization). Under FSDP1 every
    one of them breaks: the Trainer's wrap policy for a peft model makes each lora_A / lora_B a unit of its own
    (transformers/distributed/fsdp.py update_fsdp_plugin_peft -> peft/utils/other.py fsdp_auto_wrap_policy), and a
    unit that is never called is never unsharded (torch/distributed/fsdp/_runtime_utils.py _pre_forward_unshard),
    so B A meets this rank's shard ("inconsistent tensor size"); with the decoder layers as the only units,
    ParametrizationList.__init__'s `original.set_(...)` rewrites a view FSDP1 split off its flat parameter
    (torch/distributed/fsdp/_flat_param.py FlatParamHandle._use_unsharded_views, torch.split: "a view ... modified
    inplace"), and NO_SHARD leaves the tensor a plain attribute that register_parametrization refuses. All three seen
    on 2 CPU processes (tests/runner/test_moe_lora_sharded.py). FSDP2 (its units the decoder layers, which
    unshard every weight inside them) and DeepSpeed ZeRO-2/3 train them to DDP's weights (the same test)."""
    if cfg.fsdp_version is not FsdpVersion.ONE or not cfg.trains_adapter:
        return None
    wrapped = wrapped_lora_targets(cfg.model, cfg.lora_targets)
    if not wrapped:
        return None
    return (f"FSDP1 cannot train LoRA on {', '.join(wrapped)} of {cfg.model.name}: peft adapts them as parameters "
            "(ParamWrapper), reading lora_A / lora_B without calling them, so FSDP1 never unshards those weights; "
            "use --fsdp-version 2, DeepSpeed ZeRO, or --lora-targets without them")


def is_sharded(cfg: TrainConfig) -> bool:
    return cfg.fsdp is not FsdpStrategy.no_shard


def shard_group(cfg: TrainConfig) -> int:
    """Ranks a sharded state is split over: the data-parallel group, or within one node for hybrid."""
    if cfg.fsdp is FsdpStrategy.hybrid_shard:
        per_node = max(1, cfg.cluster.gpus_per_node // (cfg.tp * cfg.pp))
        return min(cfg.dp, per_node)
    return cfg.dp


# --- memory -------------------------------------------------------------------------------------

# the item of FSDP2's tail reduce-scatter in backward (fsdp2_head_reduce_scatter_bytes)
HEAD_REDUCE_SCATTER = "FSDP2 head reduce-scatter"

weight_bytes_per_param = ddp.weight_bytes_per_param  # FSDP's MixedPrecision keeps the module's dtypes


def shards_weights(cfg: TrainConfig) -> bool:
    return cfg.fsdp in (FsdpStrategy.full_shard, FsdpStrategy.hybrid_shard)


def frozen_in_mixed_units(cfg: TrainConfig) -> float:
    """Frozen elements per tensor-parallel rank that FSDP1 gives gradients anyway: with use_orig_params=True (what
    ftplan's accelerate config sets) a FlatParameter that mixes frozen and trained tensors requires grad as a whole
    (torch/distributed/fsdp/_flat_param.py `_reset_flat_param_grad_info_if_needed`: "as long as one parameter
    requires gradient, then the flat parameter must require gradient"), so its gradient and its sharded gradient
    cover the frozen tensors too (the FSDP docstring: mixing them leads to "higher than expected gradient memory
    usage"). With --freeze-layers the frozen layers are units of their own, but the root unit mixes the frozen
    embedding with the trained final norm and head. LoRA under the Trainer gets peft's wrap policy, which makes
    every trained LoRA linear a unit of its own (peft/utils/other.py `fsdp_auto_wrap_policy`): nothing mixes.
    FSDP2 shards per parameter and gives a frozen one no gradient."""
    if (cfg.fsdp_version is not FsdpVersion.ONE or not is_sharded(cfg) or cfg.method is not Method.full
            or cfg.freeze_layers <= 0 or cfg.pp > 1):
        return 0.0
    return embedding_params(cfg.model) / cfg.tp


def gradients(cfg: TrainConfig, trained: float, n: int) -> tuple[float, float]:
    """(GPU, host) bytes: sharded gradients in the parameter's dtype (on the host under CPU offload), frozen
    tensors of a mixed FSDP1 unit included (frozen_in_mixed_units)."""
    if not is_sharded(cfg):
        return ddp.gradients(cfg, trained, n)
    grads = (trained + frozen_in_mixed_units(cfg)) * grad_dtype_bytes(cfg.precision) / n
    if cfg.offload is Offload.all:
        return 0.0, grads
    return grads, 0.0


def fsdp2_rank0_padding_elements(cfg: TrainConfig, n: int) -> tuple[float, float]:
    """(all, trained) elements rank 0 of FSDP2's shard group of `n` ranks holds beyond the even share P / n that
    planner.memory's sharded states count. FSDP2 shards each parameter along dim 0 with torch.chunk: rank r holds
    chunk r, ceil(d0 / n) rows for the first ranks and fewer or none for the last, and every rank allocates its shard
    padded to chunk 0's size (torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_param.py `_init_sharded_param`:
    `_chunk_with_empty`, `padded_sharded_size = chunks[0].size()  # 0th always padded`, `new_zeros`), its gradient
    shard a view of the reduce-scatter output laid out in the same padded sizes (_fsdp_collectives.py
    `foreach_reduce`), and the optimizer's states take the unpadded local shard's shape (torch/optim/adamw.py
    `zeros_like`), largest on rank 0, the rank torch.cuda's per-rank peak is the largest on. So rank 0 holds
    (ceil(d0 / n) - d0 / n) x (elements per row) more of each of them: of a reward model's `score` (num_labels x h:
    1 row, held whole by rank 0 while n > 1), of the input embedding and an untied LM head (V rows), of each
    decoder layer's linear weights (out_features rows) and biases, and of fused expert tensors (transformers >= 5:
    the experts are dim 0). Norms (width h or head_dim) are left out: under one element per norm for shard groups
    that do not divide them. Not counted: LoRA's adapters (peft's r x in lora_A), quantized storage and experts
    under expert parallelism (sharded on their own mesh, planner.moe). Measured on 2 CPU ranks
    (tests/validation/test_memory_sharded_measured.py fsdp2-rm: rank 0's sharded gradients, to the byte)."""
    if not (cfg.fsdp_version is FsdpVersion.TWO and is_sharded(cfg) and cfg.quant is Quant.none and n > 1):
        return 0.0, 0.0
    m, full = cfg.model, cfg.method is Method.full

    def extra(rows: float, per_row: float) -> float:
        return per_row * (-(-rows // n) - rows / n)

    vh = extra(m.vocab_size, m.hidden_size)
    score = extra(score_params(m, cfg.stage) // m.hidden_size, m.hidden_size)
    head = vh if not is_weights_tied(cfg) and cfg.stage is not Stage.rm else 0.0
    layer = 0.0
    for lin in m.linears():
        if lin.copies > 1 and cfg.ep > 1:
            continue
        rows, per_row = ((lin.copies, lin.in_features * lin.out_features) if lin.copies > 1
                         else (lin.out_features, lin.in_features))
        bias = (extra(lin.copies, lin.out_features) if lin.copies > 1 else extra(lin.out_features, 1)) \
            if lin.bias else 0.0
        layer += lin.layer_share * (extra(rows, per_row) + bias)
    layers = stage_layers(m.num_layers, cfg.pp)
    frozen_layers = min(max(cfg.freeze_layers, 0), layers)
    total = vh + head + score + layers * layer
    trained = (head + score + (layers - frozen_layers) * layer + (vh if cfg.freeze_layers <= 0 else 0.0)) \
        if full else 0.0
    return total / cfg.tp, trained / cfg.tp


def grads_live_in_backward(cfg: TrainConfig) -> bool:
    """Gradient shards exist at backward's start only when earlier micro-batches accumulated them. The Trainer's
    `model.zero_grad()` sets them to None after each step (set_to_none); FSDP1 allocates a unit's fp32 shard when
    its reduce-scatter lands (torch/distributed/fsdp/_runtime_utils.py `_accumulate_sharded_grad`:
    `flat_param._saved_grad_shard = sharded_grad`), FSDP2 reduce-scatters into fresh shards
    (_fully_shard/_fsdp_param_group.py, post_backward -> foreach_reduce): with one micro-batch neither holds any
    when backward starts (measured on 2 CPU ranks for both: tests/validation/test_memory_sharded_measured.py)."""
    return cfg.grad_accum > 1


def accumulates_unsharded_grads(cfg: TrainConfig) -> bool:
    """Under the Trainer a sharded FSDP run with accumulation keeps every unit's unsharded gradient between its
    reduce-scatters: the Trainer skips gradient synchronisation on every micro-batch but the last
    (transformers/trainer.py `_inner_training_loop`: `accelerator.no_sync` unless the accelerator's
    `sync_each_batch`), which for FSDP2 is `model.set_requires_gradient_sync(False)` and for FSDP1 FSDP's own
    `no_sync` (accelerate/accelerator.py `no_sync`). FSDP2's `post_backward` then reduce-scatters nothing and the
    gradient stays on the unsharded parameter, accumulating there (torch/distributed/fsdp/_fully_shard/
    _fsdp_param_group.py `post_backward`: `if not self.reduce_grads: ... return`; _fsdp_param.py
    `accumulate_unsharded_grad_if_needed`); FSDP1's `no_sync` docstring: it "will accumulate the full model
    gradients (instead of gradient shards) until the eventual sync". Not where the loop reduces on every
    micro-batch: --sync-each-batch, and verl's PPO actor (verl/workers/actor/dp_actor.py `update_policy`: one
    `loss.backward()` per micro-batch, no no_sync). With expert parallelism too: transformers' DistributedConfig
    `fully_shard`s the dispatched experts on their own `efsdp` mesh (transformers/distributed/fsdp.py
    `apply_fully_sharded_data_parallelism`), and `set_requires_gradient_sync(False)` recurses into every FSDPModule
    (torch/distributed/fsdp/_fully_shard/_fully_shard.py), so the experts keep their unsharded gradients as well,
    those of the rank's own experts (backward_grad_bytes); the time model's one reduction per step
    (reductions_per_step) says the same."""
    return no_sync_accumulates(cfg.fsdp, cfg.grad_accum) and not ddp.syncs_each_micro_batch(cfg)


def no_sync_accumulates(strategy: FsdpStrategy, grad_accum: int) -> bool:
    """Whether the Trainer's no_sync would keep unsharded gradients through accumulation where the loop does not
    sync each micro-batch (accumulates_unsharded_grads): a sharded strategy, more than one micro-batch. Where it
    does, `sync_each_batch` is a real choice (planner.search)."""
    return strategy is not FsdpStrategy.no_shard and grad_accum > 1


def backward_grad_bytes(cfg: TrainConfig, trained: float, held_grads: float) -> float:
    """Gradient bytes resident when a micro-batch's backward starts: none with one micro-batch
    (grads_live_in_backward); with accumulation under the Trainer, the trained parameters' unsharded gradients
    (accumulates_unsharded_grads) in MixedPrecision's param_dtype, the compute copy's (accelerate's FSDP
    mixed-precision policy sets reduce_dtype = param_dtype, accelerate/utils/dataclasses.py
    `set_mixed_precision`, so FSDP2's `to_accumulated_grad_if_needed` keeps that dtype), the frozen tensors of a
    mixed FSDP1 unit included; they are live through the forward of every later micro-batch too. No sharded
    gradient exists before the last micro-batch's reduce-scatters (the step's `zero_grad` set them to None). With
    expert parallelism a rank's unsharded experts are its own, experts / ep of them
    (moe.ep_other_ranks_expert_elements)."""
    if not grads_live_in_backward(cfg):
        return 0.0
    if not accumulates_unsharded_grads(cfg):
        return held_grads
    unsharded = trained - ep_other_ranks_expert_elements(cfg) + frozen_in_mixed_units(cfg)
    return unsharded * compute_copy_bytes(cfg.precision)


def master_bytes(cfg: TrainConfig) -> float:
    return 0.0


def shards_optimizer(cfg: TrainConfig) -> bool:
    return is_sharded(cfg)


def autocast_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """NO_SHARD autocasts like DDP; the sharded strategies' MixedPrecision casts per unit instead."""
    return {} if is_sharded(cfg) else ddp.autocast_items(cfg, sp)


def buffers(cfg: TrainConfig, sp: StageParams, trained: float, *, first: bool,
            sixteen_bit_weights: float = 0.0) -> dict[str, float]:
    """What sharded FSDP holds unsharded in backward, in the compute dtype (MixedPrecision's param_dtype).

    - "FSDP unsharded parameters": FSDP1's root unit (fsdp1_root_params), which FSDP1 does not reshard between
      forward and backward (`_post_forward_reshard` skips the root); FSDP2's tail unit (final norm and head, the
      embedding with them when tied: outside_units' `tail`), which accelerate keeps gathered from forward into
      backward (fsdp2_traffic's module docstring), and its root (outside_units' `root`: a reward model's `score`),
      which torch never reshards after forward (_fsdp_state.py `_lazy_init`: the root's `post_forward_mesh_info =
      None`), its embedding unit resharded after forward; or under SHARD_GRAD_OP every unit (no reshard after
      forward).
    - "FSDP unsharded layers": the window of the last decoder layer's backward: the layer all-gathered again and
      the one prefetched before it (FSDP1 BACKWARD_PRE under limit_all_gathers, at most two all-gathers in flight:
      torch/distributed/fsdp/_limiter_utils.py `_max_num_inflight_all_gathers = 2`; FSDP2 prefetches the next
      group in backward), and the unit's unsharded gradient before its reduce-scatter, under FSDP1 twice at the end of
      the unit's backward (unit_gradient_copies). planner.memory keeps it or
      "logits and loss", whichever is larger: the head's backward is over before the last layer's begins.
    - "FSDP unsharded gradients": the head's gradient when the head trains, the final norm's and the LM head's or a
      reward model's `score`'s (planner.states.output_params; tied, the final norm's alone,
      planner.memory.tied_embedding_items counting the tied weight's gradients): FSDP1 reduce-scatters the root's
      gradients together at the end of backward, FSDP2 the tail's once its backward is over
      (fsdp2_head_reduce_scatter_bytes, HEAD_REDUCE_SCATTER) and the root's, a reward model's `score`, in the root's
      final callback at backward's end (_fsdp_state.py `_root_post_backward_final_callback`: the root's inputs, the
      token ids, need no gradient, so no post-backward hook fires for it before): untied, outside_units'
      `tail_trained` and the score's elements (test_fsdp2_units checks the sum is output_params).
    The window leaves out the tail's reduce-scatter input that FSDP2 keeps until the next unit's post_backward
    (_fsdp_param_group.py `post_backward`: `comm_ctx.reduce_scatter_states`, one buffer by default): by the last
    layer's backward the tail's parameters and the head's gradient, counted above, are freed, and it is smaller.
    planner.memory exposes the window at its larger end (last_layer_window_exposed_bytes) and weighs it against a
    lower decoder layer's reduce-scatter (fsdp2_layer_reduce_scatter_peak_bytes), FSDP2's backward peak on 2 CPU
    ranks (tests/validation/test_memory_sharded_measured.py fsdp2, fsdp2-accum: within 1.3%)."""
    if not is_sharded(cfg):
        return {}
    m, c16 = cfg.model, compute_copy_bytes(cfg.precision)
    layer16 = c16 * layer_params(m) / cfg.tp
    root = c16 * fsdp1_root_params(cfg)
    two = cfg.fsdp_version is FsdpVersion.TWO
    out = outside_units(cfg)
    kept = c16 * (out.tail + out.root) if two else root
    items = {}
    if cfg.fsdp is FsdpStrategy.shard_grad_op:
        items["FSDP unsharded parameters"] = sixteen_bit_weights
        window = 0.0
    elif cfg.quant is not Quant.none:
        units = fsdp_quantized_units_bytes(cfg, c16)
        items["FSDP unsharded parameters"] = kept
        window = units - root
    else:
        items["FSDP unsharded parameters"] = kept
        window = 2 * layer16
    # a unit's unsharded gradient before its reduce-scatter; with accumulation under the Trainer's no_sync every
    # unit's is resident already (backward_grad_bytes) and autograd adds into it in place
    accumulated = accumulates_unsharded_grads(cfg)
    trained_layer = unit_gradient_copies(cfg) * layer16 if cfg.method is Method.full and not accumulated else 0.0
    if sp.trainable:
        window += trained_layer
    items["FSDP unsharded layers"] = window
    if cfg.method is Method.full and sp.has_head and sp.trainable and not accumulated:
        items["FSDP unsharded gradients"] = c16 * (output_params(m, cfg.stage) / cfg.tp + frozen_in_mixed_units(cfg))
    head_rs = fsdp2_head_reduce_scatter_bytes(cfg, sp)
    if head_rs:
        items[HEAD_REDUCE_SCATTER] = head_rs
    return items


# the items a sharded FSDP backward keeps beside its window (buffers): the tail's or root's unsharded parameters and
# the head's unsharded gradient
KEPT_ITEMS = ("FSDP unsharded parameters", "FSDP unsharded gradients")


def unit_gradient_copies(cfg: TrainConfig) -> int:
    """How many unit-sized unsharded gradients exist at once when a unit's backward ends. FSDP1: two. The module's
    parameters are views of the unsharded FlatParameter, made with `torch.split` (torch/distributed/fsdp/
    _flat_param.py `_get_unflat_views_unaligned` / `_get_unflat_views_aligned`, set as plain tensors in forward by
    `_use_unsharded_views(as_params=False)`), so each parameter's gradient waits at the split's backward node until
    the unit's last one arrives; SplitWithSizesBackward then concatenates them (torch/csrc/autograd/FunctionsManual.cpp
    `split_with_sizes_backward`: zeros for a view without a gradient, then `at::cat`) into the flat gradient that
    AccumulateGrad stores as `flat_param.grad`, the views' gradients still live during the cat. The post-backward hook
    (_runtime_utils.py `_post_backward_hook`) runs only after it. FSDP's author describes the same on CUDA
    (pytorch/pytorch PR 117323, the FSDP notes, awgu's review): each parameter's gradient its own allocation, then a
    concatenation into the reduce-scatter input, twice the buffer at that peak. Measured on 2 CPU ranks
    (tests/validation/test_memory_sharded_measured.py): fsdp1-freeze's peak is that cat at the end of the last decoder
    layer's backward (`aten.cat`: the layer's seven weight gradients beside its flat gradient), fsdp1-vocab's and
    fsdp1-rm's the root's (fsdp1_root_end_items). FSDP2: one, each parameter a leaf of its own whose gradient
    AccumulateGrad stores directly (torch/distributed/fsdp/_fully_shard/_fsdp_param.py `init_unsharded_param`)."""
    return 2 if cfg.fsdp_version is FsdpVersion.ONE else 1


def layer_gradient_bytes(cfg: TrainConfig, sp: StageParams) -> float:
    """The part of "FSDP unsharded layers" (buffers) that is the unit's unsharded gradient, made during its backward:
    a decoder layer's, where the layers train in full and no accumulated gradient takes it in place
    (accumulates_unsharded_grads); under FSDP1 twice, the parameters' gradients and their concatenation
    (unit_gradient_copies)."""
    if not is_sharded(cfg) or cfg.fsdp is FsdpStrategy.shard_grad_op or cfg.quant is not Quant.none:
        return 0.0
    if cfg.method is not Method.full or accumulates_unsharded_grads(cfg) or not sp.trainable:
        return 0.0
    return unit_gradient_copies(cfg) * compute_copy_bytes(cfg.precision) * layer_params(cfg.model) / cfg.tp


def last_layer_window_exposed_bytes(cfg: TrainConfig, sp: StageParams, window: float,
                                    layer_activation_bytes: float, first_backward_bytes: float = 0.0) -> float:
    """The last decoder layer's backward window ("FSDP unsharded layers", buffers) beyond the activations planner.memory
    counts whole, the larger of its two ends. At its start the layer is gathered and the next one's all-gather is in
    flight while every activation is still live: FSDP2 issues the prefetch in the layer's pre_backward
    (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py `pre_backward` -> `_backward_prefetch`), FSDP1 in
    `_pre_backward_hook` after the unit's own unshard (torch/distributed/fsdp/_runtime_utils.py `_prefetch_handle`,
    BACKWARD_PRE, at most two all-gathers in flight under limit_all_gathers). At its end the layer's unsharded
    gradient exists (layer_gradient_bytes) and the layer's own activations (`layer_activation_bytes`) are freed. The
    start holds, once backward reaches the layer's last linear, that linear's two gradients as well
    (`first_backward_bytes`: fsdp2_first_linear_backward_bytes)."""
    grad = layer_gradient_bytes(cfg, sp)
    return max(window - grad + first_backward_bytes, window - layer_activation_bytes)


def fsdp2_first_linear_backward_bytes(cfg: TrainConfig, sp: StageParams, tokens: float) -> float:
    """What the last decoder layer's backward holds beyond the start of its window (last_layer_window_exposed_bytes)
    once it reaches the layer's last linear, the MLP's output projection (the last linear of planner.models
    `ModelSpec.linears`, the first one backward meets, with every activation of the layer still live): the node's
    two outputs, its weight's gradient (in_features x out_features, with the bias, in the unsharded parameter's
    dtype, the compute copy's) and its input's (`tokens` x in_features in the activation dtype), both returned by
    the one MmBackward / AddmmBackward call. With accumulation under the Trainer's no_sync
    (accumulates_unsharded_grads) the weight's gradient is a new tensor beside the accumulated `.grad`, which
    AccumulateGrad then adds in place and frees (torch 2.13 torch/csrc/autograd/functions/accumulate_grad.h
    `accumulateGrad`: `variable_grad += new_grad` when grad mode is off); without, it becomes the `.grad` itself
    (stolen) and is the first part of the layer's unsharded gradient (layer_gradient_bytes), which the window's
    start leaves out. Measured on 2 CPU ranks (rank 0 of a hand loop on transformers' FSDP2 units, the
    8-layer model of tests/runner/test_sync_each_batch.py, fp32, micro-batch 2 x 32 tokens, profiler.tracker):
    with no_sync the peak is the down projection's backward in the last layer, 131,072 + 65,536 B above the
    layer's start, the planner's start 29,876 B under that start. FSDP2's full fine-tuning of unquantized dense
    layers only: a MoE layer ends in the experts' weighted sum, whose backward order is not measured here, and
    FSDP1 is left as it was."""
    m = cfg.model
    if not (cfg.engine is Engine.fsdp and cfg.fsdp_version is FsdpVersion.TWO and shards_weights(cfg)
            and cfg.method is Method.full and cfg.quant is Quant.none and not m.is_moe and sp.trainable > 0
            and sp.trainable_layers > 0):
        return 0.0
    last = m.linears()[-1]
    weight = last.in_features * last.out_features + (last.out_features if last.bias else 0)
    return (compute_copy_bytes(cfg.precision) * weight
            + activation_dtype_bytes(cfg.precision) * tokens * last.in_features) / cfg.tp


def fsdp2_reduces_layers(cfg: TrainConfig, sp: StageParams) -> bool:
    """FSDP2 (FULL_SHARD or hybrid) reduce-scatters each trained decoder layer's gradients in its post_backward:
    full fine-tuning of unquantized layers, more than one of them trained. Not counted with expert parallelism, whose
    experts are units of their own on another mesh (accumulates_unsharded_grads)."""
    return (cfg.engine is Engine.fsdp and cfg.fsdp_version is FsdpVersion.TWO and shards_weights(cfg)
            and cfg.method is Method.full and cfg.quant is Quant.none and cfg.ep == 1 and sp.trainable > 0
            and sp.trainable_layers > 1)


def fsdp2_layer_reduce_scatter_bytes(cfg: TrainConfig, sp: StageParams, k: int, layer_activation_bytes: float,
                                     grads_in_backward: float) -> float:
    """Bytes beyond the backward phase's states and activations (planner.memory `_peak`, with no "logits and loss", no
    window and no KEPT_ITEMS) inside the reduce-scatter of the decoder layer `k` from the last (k >= 1).

    FSDP2's post_backward (torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py) reshards the layer,
    then `foreach_reduce` (_fsdp_collectives.py) copies its unsharded gradient into a padded reduce-scatter input
    (`foreach_reduce_scatter_copy_in`, the gradient freed after it: `unsharded_grads.clear()`) and allocates the
    output shard; on the CPU gloo copies the input for the call (reduce_scatter_copy_bytes). Beside them: the layer
    below, prefetched in this layer's pre_backward (`_backward_prefetch`; below the first layer, the embedding
    unit); on the CPU the reduce-scatter input of the layer above (fsdp2_previous_reduce_scatter_input_bytes);
    the gradient shards already
    made, the tail's and the k layers' above (none new where the states' gradients are resident already, syncing
    each micro-batch with accumulation, or on the host: CPU offload copies each shard there, foreach_reduce's
    `new_sharded_grad.to(cpu)`); the root's parameters and gradient (a reward model's `score`, outside_units'
    `root`: never resharded, reduced at backward's end), and tied, the tail's (it holds the embedding, reduced at
    backward's end: _fsdp2_tail_reduces). Freed by then, untied: the tail's parameters and the head's gradient
    (KEPT_ITEMS); the activations of this layer and the k above, and with accumulation under no_sync the accumulated
    unsharded gradients of the tail and of those layers (accumulates_unsharded_grads)."""
    m, c16, n = cfg.model, compute_copy_bytes(cfg.precision), shard_group(cfg)
    out = outside_units(cfg)
    layer = c16 * layer_params(m) / cfg.tp
    below = layer if k < cfg.model.num_layers - 1 else c16 * out.embedding
    buffers = (below + layer + fsdp2_previous_reduce_scatter_input_bytes(cfg, layer) + layer / n
               + reduce_scatter_copy_bytes(cfg, layer))
    tied = is_weights_tied(cfg)
    tail = 0.0 if tied else c16 * out.tail_trained
    resident = (grads_in_backward and not accumulates_unsharded_grads(cfg)) or cfg.offload is Offload.all
    new_shards = 0.0 if resident else tail / n + k * layer / n
    stays = out.root + out.root_trained + (out.tail + out.tail_trained if tied else 0.0)
    freed = (k + 1) * layer_activation_bytes
    if accumulates_unsharded_grads(cfg):
        freed += tail + (k + 1) * layer
    return buffers + new_shards + c16 * stays - freed


def fsdp2_previous_reduce_scatter_input_bytes(cfg: TrainConfig, layer_bytes: float) -> float:
    """The reduce-scatter input of the decoder layer above (`layer_bytes`, its padded unsharded gradients) where it is
    still allocated inside this layer's reduce-scatter (fsdp2_layer_reduce_scatter_bytes): on the CPU (gloo), not on a
    GPU. torch 2.13's post_backward (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py) keeps each input in
    `comm_ctx.reduce_scatter_states` (one buffer by default, `reduce_scatter_max_input_buffers = 1`), and in the next
    group's post_backward, before `foreach_reduce` allocates that group's input, pops it: the compute stream waits on
    its reduce-scatter event and `del oldest` drops "the keepalive ref that was deferring the allocator's reuse of its
    memory". On CUDA that ref is the last: foreach_reduce (_fsdp_collectives.py) allocates the input on the compute
    stream and runs the collective on the reduce-scatter stream with no `record_stream` (FSDPModule
    `set_reduce_scatter_max_input_buffers`: "no extra stream and no record_stream"), and ProcessGroupNCCL's own refs
    (`stashed_for_allocator_safety_`, ProcessGroupNCCL.hpp) are cleared once the synchronous call's work rejoins the
    caller's stream; a block freed with recorded stream uses waits for their events before reuse but leaves the
    allocated count at once (c10/cuda/CUDACachingAllocator.cpp `DeviceCachingAllocator::free`:
    `stats.allocated_bytes[...].decrease(block->size)` before `insert_events`), so max_memory_allocated never holds two
    layers' inputs. On 2 CPU ranks over gloo the popped input's storage is still live in the next layer's
    reduce-scatter (rank 0 of a hand loop on accelerate's FSDP2 units; without it
    tests/validation/test_memory_sharded_measured.py fsdp2 is 6% under the measure): something of gloo's holds it,
    which torch's Python source does not show."""
    return layer_bytes if is_cpu(cfg.cluster.gpu) else 0.0


def fsdp2_layer_reduce_scatter_peak_bytes(cfg: TrainConfig, sp: StageParams, layer_activation_bytes: float,
                                          grads_in_backward: float) -> float:
    """The largest of the decoder layers' reduce-scatter moments (fsdp2_layer_reduce_scatter_bytes), 0 where FSDP2
    reduces no layer: linear in k, so the second layer from the last or the first layer."""
    if not fsdp2_reduces_layers(cfg, sp):
        return 0.0
    return max(fsdp2_layer_reduce_scatter_bytes(cfg, sp, k, layer_activation_bytes, grads_in_backward)
               for k in (1, sp.trainable_layers - 1))


def fsdp1_root_params(cfg: TrainConfig) -> float:
    """Elements (per tensor-parallel rank) of FSDP1's root unit: what no auto-wrapped decoder layer holds, the input
    embedding, the final norm and the head, an LM head or a reward model's `score` (planner.states.output_params).
    torch 2.13 builds the root's FlatParameter from the module's parameters that no nested FSDP instance flattened
    already (torch/distributed/fsdp/_init_utils.py `_init_param_handle_from_module` -> `_get_orig_params`: "any
    original parameters already flattened" are skipped); transformers' GenericForSequenceClassification
    (modeling_layers.py; LlamaForSequenceClassification) ends in `score` = nn.Linear(h, num_labels, bias=False), with
    no lm_head."""
    return (embedding_params(cfg.model) + output_params(cfg.model, cfg.stage)) / cfg.tp


def _fsdp2_tail_reduces(cfg: TrainConfig, sp: StageParams) -> bool:
    """FSDP2 (sharded) reduce-scatters the untied tail's gradients once its backward is over: full fine-tuning, the
    head trained (--freeze-layers freezes the embedding and the first layers, not the head: runner/model.py
    `_freeze_first_layers`). Tied (fsdp2_traffic.is_weights_tied, which a reward model never is), the tail holds the
    embedding and reduces at backward's end instead (its inputs, the token ids, need no gradient: fsdp2_traffic),
    where the tied weight's two gradients already peak (planner.memory.tied_embedding_items). A reward model's tail
    is the final norm alone (its `score` stays in the root), its embedding a unit of its own."""
    return (cfg.fsdp_version is FsdpVersion.TWO and is_sharded(cfg) and cfg.method is Method.full
            and cfg.quant is Quant.none and sp.has_head and sp.trainable > 0 and not is_weights_tied(cfg))


def _fsdp2_embedding_reduces(cfg: TrainConfig, sp: StageParams) -> bool:
    """... and the input embedding's unit at backward's end, where the embedding trains (not under --freeze-layers)."""
    return _fsdp2_tail_reduces(cfg, sp) and sp.has_embedding and cfg.freeze_layers == 0


def reduce_scatter_copy_bytes(cfg: TrainConfig, input_bytes: float) -> float:
    """gloo's reduce_scatter_tensor (the CPU device) works on a full-size copy of its input, live for the call
    (measured on 2 CPU ranks: a 64 MiB input takes 64 MiB more for the call; torch 2.13's gloo has no in-place
    reduce-scatter); NCCL writes the output directly."""
    return input_bytes if is_cpu(cfg.cluster.gpu) else 0.0


def fsdp2_head_reduce_scatter_bytes(cfg: TrainConfig, sp: StageParams) -> float:
    """The tail unit's reduce-scatter in backward, as bytes beyond "FSDP unsharded parameters" and "FSDP unsharded
    gradients" (planner.memory keeps the largest of it, the logits' buffers and the last layer's window).

    The tail's post_backward fires once the final norm's input gradient exists, every activation still live, and
    reshards the tail before reducing (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py `post_backward`);
    `foreach_reduce` (_fsdp_collectives.py) copies the head's unsharded gradient into a padded reduce-scatter input
    in the reduce dtype, then allocates the output shard; the tail's pre_backward has already prefetched the last
    decoder layer (`_backward_prefetch`), and on the CPU gloo copies the input (reduce_scatter_copy_bytes). So the
    moment holds the input, the output shard, the prefetched layer and gloo's copy where the tail's parameters were.
    The head's gradient outlives the copy-in: foreach_reduce clears its list (`unsharded_grads.clear()`), but the
    loop variable of its `for i, (fsdp_param, unsharded_grad) in enumerate(...)` still holds the group's last
    gradient, the head's, until it returns, past the output's allocation. Measured on 2 CPU ranks (a 134M Llama in
    fp32, benchmarks/accuracy.py's FSDP row): this moment is its peak to 0.1%."""
    if not _fsdp2_tail_reduces(cfg, sp):
        return 0.0
    m, c16, n = cfg.model, compute_copy_bytes(cfg.precision), shard_group(cfg)
    tail = c16 * outside_units(cfg).tail_trained
    layer = c16 * layer_params(m) / cfg.tp
    return tail / n + layer + reduce_scatter_copy_bytes(cfg, tail)


def end_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """The end of backward under sharded FSDP: FSDP1's root unit (fsdp1_root_end_items) or FSDP2's embedding unit
    (fsdp2_embedding_end_items) reduces last."""
    if cfg.fsdp_version is FsdpVersion.ONE:
        return fsdp1_root_end_items(cfg, sp)
    return fsdp2_embedding_end_items(cfg, sp)


def fsdp1_root_end_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """The end of backward under sharded FSDP1 with the head trained (full fine-tuning; LoRA's root is frozen): the
    root unit's FlatParameter (fsdp1_root_params: embedding, final norm, LM head or a reward model's score) gets its
    gradient last, after the embedding's. Its peak is the concatenation of its parameters' gradients into the flat
    gradient (unit_gradient_copies: SplitWithSizesBackward's `at::cat`), before the post-backward hook runs: the
    root's unsharded parameters (never resharded after forward; `_post_backward_reshard` frees them only in the
    hook, torch/distributed/fsdp/_runtime_utils.py `_post_backward_hook`), every view's gradient (the head's, held
    since its backward, the final norm's and the embedding's, frozen tensors of the mixed unit included:
    frozen_in_mixed_units; the flat parameter requires grad as a whole, so each view does) and the flat gradient,
    every other unit's gradient shard already made and the root's not yet (the states hold it, in the gradients'
    dtype: the flat gradient counts beyond it). The hook then frees the unsharded parameters and reduce-scatters the
    flat gradient (`_reduce_grad`: `dist.reduce_scatter_single(new_sharded_grad, padded_unsharded_grad)`), on the CPU
    through gloo's full-size copy (reduce_scatter_copy_bytes): at most two root-sized buffers beside the states
    against the cat's three less a shard, a smaller moment on any device. Measured on 2 CPU ranks
    (tests/validation/test_memory_sharded_measured.py fsdp1-vocab and fsdp1-rm, fp32): the peak is that cat
    (`aten.cat`), to 2.6 KB. A trained tied embedding peaks earlier and higher, its two gradients and their sum
    before the view's backward (three V x H: planner.memory.tied_embedding_items, which planner.memory adds to these),
    the root's unsharded parameters beside them and its gradient shard not yet made; the cat after it holds the sum
    in place of the other two. Measured on 2 CPU ranks (tests/validation/test_memory_sharded_measured.py
    fsdp1-tied): the peak is that sum (`aten.add`), to 4.4 KB."""
    if not (is_sharded(cfg) and cfg.method is Method.full and sp.has_head and sp.trainable > 0):
        return {}
    elements = fsdp1_root_params(cfg)
    root = compute_copy_bytes(cfg.precision) * elements
    shard = grad_dtype_bytes(cfg.precision) * elements / shard_group(cfg)  # the states' (gradients)
    if is_weights_tied(cfg) and cfg.freeze_layers == 0 and sp.has_embedding:
        return {"FSDP1 root parameters, unsharded (beyond its gradient shard)": root - shard}
    return {"FSDP1 root parameters, unsharded": root, "FSDP1 root gradients, per parameter": root,
            "FSDP1 root gradient, flat (beyond its shard)": root - shard}


def fsdp2_embedding_end_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """The end of backward under sharded FSDP2: the input embedding's unit reduces last. Its inputs (token ids) need
    no gradient, so no post-backward hook fires for it in backward; the root's final callback runs its post_backward
    (torch/distributed/fsdp/_fully_shard/_fsdp_state.py `_root_post_backward_final_callback`), which reshards it and
    reduce-scatters its V x H gradient with every other gradient shard already made: the unsharded gradient (live
    until foreach_reduce returns, fsdp2_head_reduce_scatter_bytes), the padded reduce-scatter input, and on the CPU
    gloo's copy of it; the output shard is one of the gradients the states hold. Measured on 2 CPU ranks (134M Llama,
    fp32): the end of backward to 0.1%."""
    if not _fsdp2_embedding_reduces(cfg, sp):
        return {}
    c16 = compute_copy_bytes(cfg.precision)
    embedding = c16 * cfg.model.vocab_size * cfg.model.hidden_size / cfg.tp
    items = {"FSDP2 embedding gradient, unsharded": embedding, "FSDP2 embedding reduce-scatter input": embedding}
    copy = reduce_scatter_copy_bytes(cfg, embedding)
    if copy:
        items["gloo reduce-scatter copy"] = copy
    return items


def step_items(cfg: TrainConfig, trained: float, n: int, state_bytes: float, sp: StageParams | None = None
               ) -> dict[str, float]:
    """The step's items over the shards (planner.engines.ddp adamw_step_items); `sp` as ddp.step_items: FSDP has no
    pipeline (problems)."""
    return ddp.adamw_step_items(cfg, trained, state_bytes, n if is_sharded(cfg) else 1)


# --- time ---------------------------------------------------------------------------------------

def optimizer_shards(cfg: TrainConfig) -> int:
    return shard_group(cfg) if is_sharded(cfg) else 1


def reductions_per_step(cfg: TrainConfig) -> int:
    """Micro-batches per step whose backward reduces (ddp.reductions_per_step: under the Trainer's no_sync, the last
    one): only they run FSDP's reduce-scatters, HYBRID_SHARD's all-reduces across nodes, the copies around the
    reductions and the CPU offload's gradient copies. FSDP2's `post_backward` with `reduce_grads` False (what
    `set_requires_gradient_sync(False)` sets, with `all_reduce_grads`) reshards and returns before `foreach_reduce`
    (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py `post_backward`; _fully_shard.py
    `set_requires_gradient_sync`), and the offload's `new_sharded_grad.to(cpu)` is in foreach_reduce
    (_fsdp_collectives.py); FSDP1's `_post_backward_hook` returns before `_reduce_grad` without `_sync_gradients`
    (torch/distributed/fsdp/_runtime_utils.py), so its predivide passes and `_post_reduce_grad_callback`'s
    `_offload_grad` wait for the sync too (FullyShardedDataParallel.no_sync: "the gradients will not be offloaded
    to CPU when inside the context manager ... only ... right after the eventual sync"). Expert parallelism changes
    nothing here: the Trainer's no_sync covers every FSDP2 module (set_requires_gradient_sync recurses), as memory's
    accumulates_unsharded_grads says."""
    return ddp.reductions_per_step(cfg)


def gathering_micro_batches(cfg: TrainConfig) -> int:
    """Micro-batches per step that all-gather parameters. Every one, but FSDP1's SHARD_GRAD_OP under no_sync: its
    post-backward keeps the unsharded FlatParameter unless it syncs (torch/distributed/fsdp/_runtime_utils.py
    `_should_free_in_backward`: `state._sync_gradients or` a strategy that reshards after forward, "a *heuristic*
    to tradeoff higher memory for higher throughput"), so the next micro-batch's unshard finds it whole and gathers
    nothing (_flat_param.py `FlatParamHandle.unshard`: `if not self.needs_unshard()` it only switches views); the
    last micro-batch's synced backward frees it, and the next step's first forward gathers again. FSDP2 reshards
    after every backward whatever the sync (_fsdp_param_group.py `post_backward`: `if self.reshard_after_backward`,
    True unless set_reshard_after_backward, which accelerate does not call), so each forward gathers."""
    if cfg.fsdp_version is FsdpVersion.ONE and cfg.fsdp is FsdpStrategy.shard_grad_op and \
            not ddp.syncs_each_micro_batch(cfg):
        return 1
    return cfg.grad_accum


gradient_offloads_per_step = reductions_per_step  # the offload's gradient copies follow the reductions


def dp_comm(cfg: TrainConfig, g: Group, trainable_gpu: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
            comm_eff: float) -> tuple[float, float, float]:
    """(total, exposed) data-parallel seconds per step, and host-link seconds of CPU offload: FSDP1 one all-gather
    and one reduce-scatter per unit (planner/collectives.py), FSDP2 in accelerate's units (fsdp2_traffic)."""
    grad_bytes = _grad_bytes(cfg, trainable_gpu)
    if cfg.fsdp is FsdpStrategy.no_shard:
        return ddp.bucketed_allreduce(cfg, g, grad_bytes, bwd_s)
    shard_g = pc.intra_node_group(cfg.cluster, g.per_node, comm_eff) if cfg.fsdp is FsdpStrategy.hybrid_shard else g
    passes = pass_seconds(cfg, shard_g, trainable_gpu, param_bytes_gpu)
    r, gathering = reductions_per_step(cfg), gathering_micro_batches(cfg)
    # FSDP1 and FSDP2 issue their all-gathers and reduce-scatters synchronously (sharded.overlap_for)
    total, exposed, h2d = pass_comm(cfg, shard_g, passes, fwd_s, bwd_s, gathers_async=False, rs_async=False,
                                    gathering=gathering, reductions=r)
    if cfg.fsdp is FsdpStrategy.hybrid_shard:
        shard = g.per_node
        replicas = Group(n=cfg.dp // shard, per_node=1, intra_bytes_per_s=g.intra_bytes_per_s,
                         inter_bytes_per_s=g.inter_bytes_per_s)
        calls = _reduce_scatter_calls(cfg, trainable_gpu, param_bytes_gpu)
        ar = sum(n * allreduce_time_s(b / shard, replicas) for b, n in calls)
        # each unit's all-reduce runs on a stream of its own once that unit's reduce-scatter is done (FSDP1
        # _runtime_utils.py `_reduce_grad`: `_all_reduce_stream.wait_stream(_post_backward_stream)`; FSDP2
        # _fsdp_collectives.py `foreach_reduce`: `all_reduce_stream.wait_stream(reduce_scatter_stream)`), over other
        # links: in each micro-batch that reduces, the all-reduces hide behind the longer of its backward and its
        # intra-node chain (whose own excess over backward pass_comm counts), not behind a backward of their own
        chain = passes.backward_gathers_s + passes.reduce_scatters_s
        window = max(bwd_s, chain) if cfg.cluster.gpu.overlaps_comm else bwd_s
        units = passes.reduce_scatter_calls
        ar_exposed = r * overlap_for(cfg, issued_async=False)(ar, window, ar / max(1, units))
        ar_sync = sync_calls_s(cfg, r * units)
        total, exposed = total + r * ar + ar_sync, exposed + ar_exposed + ar_sync
    else:
        shard = g.n
    gather_compute, gather_side = gather_copy_passes_s(cfg, _gathered_bytes(passes), shard)
    reduce_compute, reduce_side = reduce_copy_passes_s(cfg, grad_bytes, shard)
    on_compute = gathering * gather_compute + r * reduce_compute
    on_side = gathering * gather_side + r * reduce_side
    hidden = on_side if cfg.cluster.gpu.overlaps_comm else 0.0
    return total + on_compute + on_side, exposed + on_compute + on_side - hidden, h2d


def reduce_chain_s(cfg: TrainConfig, g: Group, trainable_gpu: float, param_bytes_gpu: float) -> float:
    """Seconds per micro-batch of the backward-side traffic the CPU offload's gradient copies wait behind: FSDP copies
    each unit's reduced shard to the host on the stream that reduced it, after the reduction (FSDP1
    _runtime_utils.py `_post_reduce_grad_callback` -> `_offload_grad` on the post-backward stream; FSDP2
    _fsdp_collectives.py `foreach_reduce`: `new_sharded_grad.to(cpu)` under `post_reduce_stream`): the chain of
    backward gathers and reduce-scatters pass_comm overlaps with backward. CPU offload is FULL_SHARD's only."""
    if not is_sharded(cfg) or cfg.fsdp is FsdpStrategy.hybrid_shard:
        return 0.0
    passes = pass_seconds(cfg, g, trainable_gpu, param_bytes_gpu)
    return passes.backward_gathers_s + passes.reduce_scatters_s


def _grad_bytes(cfg: TrainConfig, trainable_gpu: float) -> float:
    """Gradient bytes reduced per micro-batch: MixedPrecision reduces in 16 bits (fp32 in a 32-true run)."""
    return trainable_gpu * compute_copy_bytes(cfg.precision)


def _reduce_scatter_calls(cfg: TrainConfig, trainable_gpu: float, param_bytes_gpu: float) -> Calls:
    """(unsharded gradient bytes per call, calls) of one micro-batch's reduce-scatters."""
    grad_bytes = _grad_bytes(cfg, trainable_gpu)
    if cfg.fsdp_version is FsdpVersion.TWO:
        return fsdp2_traffic(cfg, param_bytes_gpu, grad_bytes).reduce_scatters
    units = col.fsdp_units(stage_layers(cfg.model.num_layers, cfg.pp))
    return ((grad_bytes / units, units),) if grad_bytes > 0 else ()


def pass_seconds(cfg: TrainConfig, g: Group, trainable_gpu: float, param_bytes_gpu: float) -> PassSeconds:
    """One micro-batch of sharded FSDP's collectives over the shard group `g`.
    FSDP1: one all-gather and one reduce-scatter per unit (one per decoder layer and the root), the backward's
    all-gather again unless SHARD_GRAD_OP keeps the unit gathered; its first gather of each pass exposed.
    FSDP2: accelerate's units at their own sizes (fsdp2_traffic), each call priced at its size. Exposed where
    nothing computes beside them: the first gather of forward (the embedding's, or the tied tail's), which FSDP2
    issues at the unit's pre_forward with no earlier compute to hide behind (it prefetches in forward only where told
    to: _fsdp_state.py `_pre_forward`, `_states_to_forward_prefetch`); backward's first gather is the last layer's,
    which the tail's pre_backward prefetches beside the head's backward (`_backward_prefetch`), and its last
    reduce-scatter, issued from the root's final callback after the last gradient (`_root_post_backward_final_callback`,
    whose `finalize_backward` waits on it) is what stays exposed. A backward under the Trainer's no_sync reduces
    nothing (reductions_per_step): FSDP2's then leaves nothing exposed of its own (each gather prefetched behind the
    backward before it, the first behind the head's), FSDP1's its first gather, as in forward."""
    grad_bytes = _grad_bytes(cfg, trainable_gpu)
    if cfg.fsdp_version is FsdpVersion.TWO:
        t = fsdp2_traffic(cfg, param_bytes_gpu, grad_bytes)
        fwd_calls = [(pc.param_allgather_s(b, g), n) for b, n in t.forward_gathers]
        bwd_calls = [(pc.param_allgather_s(b, g), n) for b, n in t.backward_gathers]
        rs_calls = [(pc.grad_reduce_scatter_s(b, g), n) for b, n in t.reduce_scatters]
        last_rs = rs_calls[-1][0] if rs_calls else 0.0
        return PassSeconds(
            forward_gathers_s=sum(s * n for s, n in fwd_calls), backward_gathers_s=sum(s * n for s, n in bwd_calls),
            reduce_scatters_s=sum(s * n for s, n in rs_calls),
            forward_first_s=fwd_calls[0][0] if fwd_calls else 0.0,
            backward_gather_first_s=bwd_calls[0][0] if bwd_calls else 0.0,
            reduce_scatter_last_s=last_rs, backward_last_s=last_rs, backward_gathers_last_s=0.0,
            gather_calls=t.gather_calls,
            reduce_scatter_calls=t.reduce_scatter_calls,
            gathered_bytes=((sum(b * n for b, n in t.forward_gathers), 1),
                            (sum(b * n for b, n in t.backward_gathers), 1)))
    units = col.fsdp_units(stage_layers(cfg.model.num_layers, cfg.pp))
    gathers = 1 if cfg.fsdp is FsdpStrategy.shard_grad_op else 2
    ag = split_time_s(pc.param_allgather_s, param_bytes_gpu, units, g)
    rs = split_time_s(pc.grad_reduce_scatter_s, grad_bytes, units, g)
    return PassSeconds(forward_gathers_s=ag, backward_gathers_s=(gathers - 1) * ag, reduce_scatters_s=rs,
                       forward_first_s=ag / units, backward_gather_first_s=ag / units,
                       reduce_scatter_last_s=rs / units, backward_last_s=ag / units,
                       backward_gathers_last_s=ag / units if gathers > 1 else 0.0, gather_calls=gathers * units,
                       reduce_scatter_calls=units, gathered_bytes=((param_bytes_gpu, gathers),))


def _gathered_bytes(p: PassSeconds) -> float:
    return sum(b * n for b, n in p.gathered_bytes)


def gather_copy_passes_s(cfg: TrainConfig, gathered_bytes: float, shard: int) -> tuple[float, float]:
    """(compute-stream, side-stream) seconds per gathering micro-batch of FSDP's own memory passes around its
    all-gathers, each a read and a write at the device's elementwise bandwidth (`gathered_bytes`: the unsharded bytes
    all-gathered in the micro-batch). FSDP2 (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py, torch 2.13),
    per gather: the copy-in of the local shards into the all-gather input (`foreach_all_gather`, all_gather_copy_in,
    on the copy-in stream) and the copy-out into the unsharded parameters (`foreach_all_gather_copy_out`,
    split_with_sizes_copy, on the compute stream in `wait_for_unshard`). FSDP1 gathers into the FlatParameter: none."""
    if cfg.fsdp_version is not FsdpVersion.TWO:
        return 0.0, 0.0
    bw = cfg.cluster.gpu.elementwise_bytes_per_s
    return 2 * gathered_bytes / bw, 2 * gathered_bytes / shard / bw


def reduce_copy_passes_s(cfg: TrainConfig, grad_bytes: float, shard: int) -> tuple[float, float]:
    """(compute-stream, side-stream) seconds per reducing micro-batch (reductions_per_step) of FSDP's own memory
    passes around its reduce-scatters (`grad_bytes`: the unsharded gradients reduced), each a read and a write at
    the device's elementwise bandwidth. FSDP2: the copy-in of the unsharded gradients into the reduce-scatter input
    (_fsdp_collectives.py `foreach_reduce_scatter_copy_in`, compute stream); fp32 and bf16 reduce with
    ReduceOp.AVG: no division. FSDP1 reduces its flat gradient in place, but divides it before and after the
    reduce-scatter (torch/distributed/fsdp/_runtime_utils.py `_reduce_grad`: `_div_if_needed` with the predivide
    factor and n / factor after, each only where above 1, on the post-backward stream)."""
    bw = cfg.cluster.gpu.elementwise_bytes_per_s
    if cfg.fsdp_version is FsdpVersion.TWO:
        return 2 * grad_bytes / bw, 0.0
    pre = predivide_factor(shard)
    side = (2 * grad_bytes if pre > 1 else 0.0) + (2 * grad_bytes / shard if shard / pre > 1 else 0.0)
    return 0.0, side / bw


def predivide_factor(world: int) -> int:
    """FSDP1's gradient predivide factor (torch/distributed/algorithms/_comm_hooks/default_hooks.py
    `DefaultState._get_gradient_predivide_factor`, which fsdp/_init_utils.py sets):
    doubled while it divides the world size and is below world / factor."""
    factor = 1
    while world % factor == 0 and world / factor > factor:
        factor *= 2
    return factor


def hook_host_s(cfg: TrainConfig, layers: int) -> float:
    """Per micro-batch: host work of FSDP's unit hooks (planner/collectives.py), per unit holding parameters (FSDP2:
    fsdp2_traffic.fsdp2_units; the CPU device's cost measured per fully_shard unit, profiler/device_fit.py)."""
    if not is_sharded(cfg):
        return 0.0
    gpu = cfg.cluster.gpu
    per = gpu.fsdp_unit_host_s if gpu.fsdp_unit_host_s is not None else col.FSDP_UNIT_HOST_OPS * gpu.host_op_s
    units = fsdp2_units(cfg) if cfg.fsdp_version is FsdpVersion.TWO else col.fsdp_units(layers)
    return units * per
