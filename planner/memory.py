"""Memory per GPU, in bytes, at the peak of a training step: this module adds the parts up.

A step has three candidate peaks; the breakdown reported is the one of the largest:
- "backward": the loss backward has just started: all saved activations, the logits and loss
  buffers, and (with gradient accumulation) the gradients of earlier micro-batches;
- "gradients": the end of backward: every gradient, no activations;
- "optimizer": the optimizer step: gradients, states and the step's temporaries.

Model states (weights, gradients, optimizer states) and framework buffers come from the engine's module
(planner/engines/: ddp, zero, fsdp), following Rajbhandari et al. 2020 (ZeRO, Sec. 3 and Fig. 1);
activations from planner.activations; bytes per element from planner.states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner import allocator, deepspeed_sizes, engines, init_allocations, moe, nccl_memory
from planner import memory_knobs as knobs
from planner.activations import (
    derived_layer_fixed_bytes,
    hf_layer_bytes_per_token,
    norm_saved_bytes_per_token,
    trl_logprob_head_bytes,
)
from planner.calibration import DEFAULT, Calibration
from planner.compute import tokens_per_sample
from planner.engines import parallel
from planner.gpus import is_cpu
from planner.rl import memory as rl_memory
from planner.rl.parts import logprob_head_rows
from planner.rl.settings import is_online_rl
from planner.states import (
    ModelStates,
    StageParams,
    activation_dtype_bytes,
    compute_copy_bytes,
    grad_dtype_bytes,
    kbit_prepared,
    optimizer_state_bytes_per_param,
    quant_bytes_per_param,
    stage_params,
)
from planner.strategy import Attn, FsdpStrategy, GradCkpt, Method, Offload, OffloadDevice, Quant, Stage, TrainConfig

__all__ = ["BACKWARD_ONLY_ITEMS", "CATEGORIES", "MemoryBreakdown", "StageParams", "memory_per_gpu",
           "optimizer_state_bytes_per_param", "quant_bytes_per_param", "shard_group", "stage_params"]

CATEGORIES = ("weights", "gradients", "optimizer", "activations", "other")
# "other" items live only in the backward phase (gone by the end of backward and the optimizer step). ZeRO-3's
# gathered parameters too: each module's are released after its backward, and step() starts by releasing any
# left (stage3.py step: _partition_all_parameters); measured, the end of backward holds no more than before
# forward (tests/validation/test_memory_zero_step_measured.py).
BACKWARD_ONLY_ITEMS = ("logits and loss", "dequantized weight", "autocast weight copies",
                       "ZeRO-3 gathered parameters", "ZeRO-3 parameters kept for backward",
                       "ZeRO-3 LM head gradient, reduced alone")
# The model's output (its logits) that a training loop keeps until after the optimizer step (--keeps-output,
# planner.memory_knobs.held_output_bytes_per_logit): in every phase, allocated anew each micro-batch
HELD_OUTPUT_ITEM = "model output the loop holds"
# The packed documents' 4-D mask a data collator builds (--collator-mask, collator_mask_bytes): in every phase, made
# anew each step
COLLATOR_MASK_ITEM = "packed documents' mask (collator)"
# Buffers made once and reused every step (DDP's buckets, DeepSpeed's bucket and flat buffers): laid out once, they
# do not fragment the caching allocator; every other "other" item is allocated and freed within a step.
PERSISTENT_ITEMS = ("DDP gradient buckets", "ZeRO buckets (overlap_comm)", "ZeRO-3 reduce bucket",
                    "ZeRO-3 persistent parameters")
# What a GPU holds besides the tensors (the three readings: allocated <= reserved <= device)
NOT_ALLOCATED_ITEMS = ("allocator reserve", "CUDA context and workspaces", "NCCL communicator buffers")


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
    # the caching allocator's reserve on a card with room for it (the reserve item is capped at the card)
    reserve_wanted: float = 0.0
    tensor_bytes: float = 0.0  # the allocated reading, as _peak added it up
    # what the reserved reading holds at least whatever the step, on a GPU (FSDP1's init cache: _peak's
    # `reserved_floor`); planner.rl.memory carries it onto an online RL stage's peak
    reserved_floor: float = 0.0

    @property
    def total(self) -> float:
        """The device reading (what nvidia-smi shows the process holding): the fit verdict's figure."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.other

    @property
    def allocated(self) -> float:
        """`torch.cuda.max_memory_allocated`: the tensors at the peak."""
        return self.tensor_bytes

    @property
    def reserved(self) -> float:
        """`torch.cuda.max_memory_reserved`: the tensors plus the caching allocator's unusable free blocks."""
        return self.allocated + self.other_items.get("allocator reserve", 0.0)

    @property
    def device(self) -> float:
        """nvidia-smi's memory in use: reserved + the CUDA context + NCCL's buffers outside the allocator."""
        return self.total

    @property
    def device_wanted(self) -> float:
        """The device reading if the card had room for the whole cache: above the card, the allocator frees and
        retries (slow, and fragmentation can still end it in an out-of-memory error): a tight plan."""
        return max(self.total, self.total - self.other_items.get("allocator reserve", 0.0) + self.reserve_wanted)

    @property
    def fit_bytes(self) -> float:
        """What must fit on the card: the tensors, the CUDA context, NCCL's buffers and the part of the allocator's
        reserve it cannot release when memory runs short (planner.allocator.RETAINED_RESERVE_FRACTION)."""
        items = self.other_items
        outside = items.get("CUDA context and workspaces", 0.0) + items.get("NCCL communicator buffers", 0.0)
        return self.tensor_bytes + outside + allocator.RETAINED_RESERVE_FRACTION * self.reserve_wanted

    def readings(self) -> dict[str, int]:
        return {"allocated": round(self.allocated), "reserved": round(self.reserved), "device": round(self.device)}

    def as_dict(self) -> dict[str, int]:
        return {"weights": round(self.weights), "gradients": round(self.gradients),
                "optimizer": round(self.optimizer), "activations": round(self.activations),
                "other": round(self.other), "total": round(self.total)}

    def allocated_dict(self) -> dict[str, int]:
        """as_dict for the allocated reading: "other" without what lies outside the tensors (NOT_ALLOCATED_ITEMS:
        the allocator's reserve, the CUDA context, NCCL's buffers), "total" the allocated peak: what a run's
        max_memory_allocated, or a dry run's live fake tensors, is compared with. On the CPU it equals as_dict."""
        outside = sum(self.other_items.get(k, 0.0) for k in NOT_ALLOCATED_ITEMS)
        return {**self.as_dict(), "other": round(self.other - outside), "total": round(self.allocated)}


def shard_group(cfg: TrainConfig) -> int:
    """Ranks a sharded state is split over: the data-parallel group, or within one node for FSDP's hybrid."""
    if cfg.fsdp is FsdpStrategy.hybrid_shard:  # only FSDP configs carry a strategy other than full_shard
        return engines.fsdp.shard_group(cfg)
    return cfg.dp


def memory_per_gpu(cfg: TrainConfig, cal: Calibration = DEFAULT) -> MemoryBreakdown:
    """Peak bytes on the most loaded GPU (pipeline stage 0 or the last stage). The online RL stages add their
    models and generation engine to the policy's training step (planner.rl.memory)."""
    if is_online_rl(cfg.stage):
        return rl_memory.rl_memory_per_gpu(_TRAINING, cfg, cal)
    return training_memory_per_gpu(cfg, cal)


def training_memory_per_gpu(cfg: TrainConfig, cal: Calibration = DEFAULT) -> MemoryBreakdown:
    """Peak bytes of the training step alone on the most loaded GPU (pipeline stage 0 or the last stage)."""
    if cfg.pp == 1:
        return _stage_memory(cfg, cal, first=True)
    first, last = _stage_memory(cfg, cal, first=True), _stage_memory(cfg, cal, first=False)
    return first if first.total >= last.total else last


# --- model states -------------------------------------------------------------------------------

def sixteen_bit_weight_bytes(cfg: TrainConfig, sp: StageParams) -> float:
    """The stage's weights as a frozen 16-bit (or quantized) copy: a reference model, FSDP's gathered units."""
    frozen = sp.total - sp.trainable if cfg.method is Method.full else sp.total
    return sp.trainable * 2 + (frozen - sp.quantized) * 2 + sp.quantized * quant_bytes_per_param(cfg.quant,
                                                                                                  cfg.double_quant)


def weight_bytes(cfg: TrainConfig, sp: StageParams, n: int) -> float:
    """The stage's weights per GPU (before parameter offload). LoRA's adapters come on top of the base
    model, whose weights all stay frozen (sp.total counts the base); bitsandbytes stores the quantized ones."""
    eng = engines.of(cfg)
    frozen = sp.total - sp.trainable if cfg.method is Method.full else sp.total
    trainable_w_bytes, frozen_w_bytes = eng.weight_bytes_per_param(cfg)
    q_bytes = quant_bytes_per_param(cfg.quant, cfg.double_quant)
    weights = sp.trainable * trainable_w_bytes + (frozen - sp.quantized) * frozen_w_bytes + sp.quantized * q_bytes
    if cfg.stage is Stage.dpo and cfg.method is Method.full:
        # TRL's frozen reference model (peft reuses the base with adapters off) in the policy's dtype:
        # DPOTrainer builds it with dtype=model.dtype (trl/trainer/dpo_trainer.py, ref_model_init_kwargs),
        # so fp32 under DDP/FSDP mixed precision, where the policy holds fp32 masters, and DeepSpeed casts it
        # to 16 bits with the engine (trl prepare_deepspeed). Measured: 2xCPU fp32 full DPO, see README.
        weights += sp.total * trainable_w_bytes
    if eng.shards_weights(cfg):
        weights = weights / n + knobs.replicated_quant_state_bytes(cfg, sp.quantized, n)
    return weights


def model_states(cfg: TrainConfig, sp: StageParams, n: int) -> ModelStates:
    """Weights, gradients and optimizer states (+ DeepSpeed's fp32 master) per GPU, and their host share."""
    eng = engines.of(cfg)
    weights, host_weights = weight_bytes(cfg, sp, n), 0.0
    state_bytes = optimizer_state_bytes_per_param(cfg.optimizer, cfg.precision) + eng.master_bytes(cfg)
    # FSDP2's shards padded along dim 0 on rank 0 (planner.engines.fsdp fsdp2_rank0_padding_elements)
    pad_all, pad_trained = (engines.fsdp.fsdp2_rank0_padding_elements(cfg, n) if eng is engines.fsdp
                            else (0.0, 0.0))
    if pad_all:
        trainable_w_bytes, frozen_w_bytes = eng.weight_bytes_per_param(cfg)
        weights += pad_trained * trainable_w_bytes + (pad_all - pad_trained) * frozen_w_bytes
    if cfg.offload is Offload.all:
        kept = knobs.offload_kept_quant_state_bytes(cfg, sp.quantized)
        host_weights, weights = weights - kept, kept
    trained = sp.trainable
    grads, host_grads = eng.gradients(cfg, trained, n)
    if pad_trained:
        if cfg.offload is Offload.all:
            host_grads += pad_trained * grad_dtype_bytes(cfg.precision)
        else:
            grads += pad_trained * grad_dtype_bytes(cfg.precision)
    optim = trained * state_bytes
    if eng.shards_optimizer(cfg):
        optim = optim / n + pad_trained * state_bytes
    host_optim = 0.0
    if cfg.offload is not Offload.none:
        host_optim, optim = optim, 0.0
    return ModelStates(weights=weights, gradients=grads, optimizer=optim, host_weights=host_weights,
                       host_gradients=host_grads, host_optimizer=host_optim)


# --- activations --------------------------------------------------------------------------------

def activation_bytes(cfg: TrainConfig, sp: StageParams, cal: Calibration, *, first: bool
                     ) -> tuple[float, dict[str, float]]:
    """Saved activations of the micro-batches the stage keeps in flight (on the GPU: with --activation-offload
    only the resident layers), and the "logits and loss" item of the plan's cross-entropy (absent when the
    recomputed layer outweighs it: the two are never live together). Liger's kernels save less per layer."""
    m = cfg.model
    e = activation_dtype_bytes(cfg.precision)
    tokens = cfg.micro_batch * tokens_per_sample(cfg)  # DPO, RM: chosen + rejected
    train = knobs.layer_training(cfg)
    per_layer = (hf_layer_bytes_per_token(m, act_bytes=e, attn=cfg.attn, train=train, seq_len=cfg.seq_len,
                                          t=cfg.tp, sequence_parallel=cfg.sequence_parallel,
                                          recompute=cfg.grad_ckpt) - knobs.kernel_saving_per_token(cfg, e)
                 + knobs.litgpt_layer_delta_per_token(cfg, e, train)) * tokens
    # a model read from transformers: bytes per layer whatever the tokens (LoRA on fused experts' merged weights,
    # Gemma's norm scales; planner.activations)
    per_layer += derived_layer_fixed_bytes(m, act_bytes=e, attn=cfg.attn, train=train, recompute=cfg.grad_ckpt,
                                           t=cfg.tp)
    kept = knobs.bnb_kept_input_per_token(cfg, e, train) * tokens * sp.trainable_layers
    activations = (knobs.gpu_activation_bytes(cfg, per_layer, sp.trainable_layers) + kept) * \
        parallel.micro_batches_in_flight(cfg, first=first)
    recompute = 0.0
    if cfg.grad_ckpt is GradCkpt.full:
        # backward recomputes one layer at a time: one layer's full activations on top
        recompute = (hf_layer_bytes_per_token(m, act_bytes=e, attn=cfg.attn, train=train, seq_len=cfg.seq_len,
                                              t=cfg.tp, sequence_parallel=cfg.sequence_parallel)
                     - knobs.kernel_saving_per_token(cfg, e, recomputed=True)) * tokens
        recompute += derived_layer_fixed_bytes(m, act_bytes=e, attn=cfg.attn, train=train, t=cfg.tp)
    activations *= cal.activation_multiplier
    recompute *= cal.activation_multiplier
    items: dict[str, float] = {}
    if sp.has_head and cfg.stage is not Stage.rm:
        # with what the final norm saves (RMSNorm: its fp32 upcast, 4h, and when its weight trains the 16-bit
        # tensor the weight multiplies) and, when the head's weight trains, the head's input (the norm's
        # output, e*h): freed with the head's buffers
        full = cfg.method is Method.full
        final_norm = (norm_saved_bytes_per_token(m, act_bytes=e, weight_trains=full)
                      + (e * m.hidden_size if full else 0.0)
                      - knobs.final_norm_saving_per_token(cfg, e)) / (cfg.tp if cfg.sequence_parallel else 1)
        items["logits and loss"] = knobs.head_loss_bytes(cfg, tokens, e, grad_dtype_bytes(cfg.precision)) \
            + final_norm * tokens
        if cfg.stage in (Stage.dpo, Stage.grpo, Stage.rloo):  # TRL's chunked log-prob head, no logits
            items["logits and loss"] = final_norm * tokens + trl_logprob_head_bytes(
                m, tokens=logprob_head_rows(cfg, tokens), compute_bytes=e, triton=not is_cpu(cfg.cluster.gpu),
                t=cfg.tp, head_trains=cfg.method is Method.full and sp.trainable > 0)
        else:
            held = knobs.held_output_bytes(cfg, tokens, e)
            if held:  # the loop's reference keeps them from forward to the end of the optimizer step
                items[HELD_OUTPUT_ITEM] = held
        if kbit_prepared(cfg):
            # prepare_model_for_kbit_training leaves the LM head fp32; under autocast F.linear saves its 16-bit
            # cast of the weight for the input's gradient, from the head's forward to its backward (measured:
            # tests/profiler/test_saved_activations.py)
            items["logits and loss"] += 2.0 * m.vocab_size * m.hidden_size / cfg.tp
    # The last layer is recomputed only after the loss and LM-head backward have freed the logits buffers,
    # so the recomputed layer and "logits and loss" are never live together: the backward peak holds the
    # larger of the two (seen in the profiler's dry run of Llama-2-7B with checkpointing).
    if recompute > items.get("logits and loss", 0.0):
        activations += recompute
        items.pop("logits and loss", None)
    mask = collator_mask_bytes(cfg)
    if mask:
        items[COLLATOR_MASK_ITEM] = mask
    return activations, items


def collator_mask_bytes(cfg: TrainConfig) -> float:
    """The packed documents' mask a data collator builds (Switches.collator_mask), per GPU, once per micro-batch of the
    step. LLaMA-Factory 0.9.5's neat_packing under any attention but FlashAttention-2 (data/collator.py
    SFTDataCollatorWith4DAttentionMask with block_diag_attn = neat_packing, hparams/parser.py):
    prepare_4d_attention_mask makes a (b, 1, s, s) additive mask of model_args.compute_dtype (bf16 / fp16 under bf16 /
    fp16 training, parser.py), which transformers hands every layer as it is (masking_utils._preprocess_mask_arguments:
    a 4-D mask is returned as-is) and SDPA takes as it is (convert_boolean_attn_mask converts booleans only): one tensor
    every layer's kernel saves, measured on the CPU (tests/planner/test_packed_sdpa_mask.py), so no layer counts a mask
    of its own (planner.activations, LayerTraining.shared_mask). accelerate's DataLoaderShard moves each batch to the
    GPU before yielding it (data_loader.py `send_to_device(current_batch, ...)`), and the Trainer fetches the step's
    gradient_accumulation_steps micro-batches before its first forward and holds them in one list until the step ends
    (transformers 5.25 trainer.py: `batch_samples, ... = self.get_batch_samples(...)`, then `for i, inputs in
    enumerate(batch_samples)`, the optimizer step inside that loop): every micro-batch's mask is live from the first
    forward through the optimizer step, grad_accum x b s^2 x e bytes. The compute dtype's bytes stand for e (an fp32
    plan's 4 may be 2 where LLaMA-Factory infers bf16 from the checkpoint: the plan errs high)."""
    if not cfg.collator_mask or cfg.doc_len is None or cfg.attn is Attn.flash:
        return 0.0
    return float(cfg.grad_accum * cfg.micro_batch * cfg.seq_len * cfg.seq_len * compute_copy_bytes(cfg.precision))


def tied_embedding_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """The end of backward of a model whose embedding and LM head share one trained weight (tie_word_embeddings).

    The weight is used twice, so autograd collects both gradients in the input buffer of its one AccumulateGrad node
    before that node runs (torch/csrc/autograd/input_buffer.cpp, `InputBuffer::add` -> `accumulate`; the engine runs
    a node once all its inputs are in): the head's V x H gradient waits there from the head's backward to the
    embedding's, the last op of backward. `accumulate` adds in place only into a plain tensor it holds the last
    reference to; the head's gradient arrives as TBackward's transpose of the mm that made it, and the sum is taken
    out of place (measured: `aten.add.Tensor`), so the waiting gradient, the embedding's and their sum exist at once
    beside every other gradient, before AccumulateGrad stores the sum as `.grad`: two V x H more than the gradients
    the states hold. Where those are not whole tensors (ZeRO-2/3 partitions, sharded FSDP's shards) all three come on
    top, in the compute dtype. Measured on one CPU process with a tied Llama (tests/profiler/test_tied_embedding.py)."""
    m = cfg.model
    if not (m.tie_embeddings and cfg.method is Method.full and cfg.freeze_layers == 0 and sp.has_embedding
            and sp.has_head and cfg.stage is not Stage.rm):
        return {}
    matrix = m.vocab_size * m.hidden_size / cfg.tp
    eng = engines.of(cfg)
    if eng is engines.zero:
        whole, grad = cfg.zero <= 1, compute_copy_bytes(cfg.precision) * matrix
    elif eng is engines.fsdp and engines.fsdp.is_sharded(cfg):
        whole, grad = False, compute_copy_bytes(cfg.precision) * matrix
    else:
        whole, grad = True, grad_dtype_bytes(cfg.precision) * matrix
    items = {"tied embedding: its second gradient": grad, "tied embedding: the sum of its two gradients": grad}
    if not whole:
        items["tied embedding: the head's gradient, whole"] = grad
    return items


def end_of_backward_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """What the end of backward adds: the tied embedding's accumulation, the last op inside autograd
    (tied_embedding_items), and the engine's end items. ZeRO-0's gradient all-reduce (planner/engines/zero.py
    end_items) runs after autograd has returned (runtime/engine.py `DeepSpeedEngine.backward`: `loss.backward()`, then
    `_backward_epilogue` -> `allreduce_gradients`), when AccumulateGrad has stored the sum as `.grad` and freed the
    other two: the two moments follow each other, and the larger counts. Other engines' end items are counted with the
    tied embedding's, as before (FSDP2's embedding reduce-scatter: planner/engines/fsdp.py end_items)."""
    eng = engines.of(cfg)
    tied, engine_items = tied_embedding_items(cfg, sp), eng.end_items(cfg, sp)
    if eng is engines.zero and engine_items:
        return engine_items if sum(engine_items.values()) >= sum(tied.values()) else tied
    return {**tied, **engine_items}


def dequantized_weight_items(cfg: TrainConfig) -> dict[str, float]:
    """bitsandbytes dequantizes one linear at a time into a 16-bit copy."""
    if cfg.quant is Quant.none:
        return {}
    biggest = max(lin.in_features * lin.out_features for lin in cfg.model.linears() if lin.copies == 1)
    return {"dequantized weight": 2.0 * biggest / cfg.tp}


# --- the three phases ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _StrategyParts:
    """What a stage's peak takes from the strategy alone, not from the batch shape, checkpointing or attention (the
    fields the search varies within one strategy): the stage's parameters, model states, the engine's buffers and
    step items, the end-of-backward items, and whether gradients are live when backward starts."""

    sp: StageParams
    states: ModelStates
    items: dict[str, float]  # autocast copies, dequantized weight, the engine's buffers (read-only: copied by users)
    step_items: dict[str, float]
    end_items: dict[str, float]
    grads_in_backward: float
    nccl_bytes: float  # NCCL's buffers over the strategy's communicators (planner.nccl_memory)
    reserved_floor: float = 0.0  # FSDP1's init cache and all-gather segments (planner.init_allocations)
    # what ZeRO-3's optimizer construction and step leave reserved and free (planner.zero3_init_allocations); None
    # where it is not replayed
    zero3_free: float | None = None


# The search evaluates every batch shape, checkpointing and attention of a strategy in a row: their strategy parts are
# computed once. The key is the config without its micro-batch, accumulation, checkpointing and attention; of those
# the strategy parts read only whether gradients accumulate (grad_accum > 1: ZeRO-Offload's 16-bit host buffers,
# DDP's and FSDP's gradients live at backward's start). tests/planner/test_search_exact.py checks the parts against a
# fresh computation for every candidate of several searches.
_STRATEGY_PARTS: dict[tuple, _StrategyParts] = {}
_STRATEGY_PARTS_MAX = 8192


def _strategy_key(cfg: TrainConfig, first: bool) -> tuple:
    # DeepSpeed's buffers and ZeRO-3's replayed construction read the sizes and release `configured` sets
    return (cfg.model, cfg.cluster, cfg.adapter, cfg.layout, cfg.engine_choice, cfg.switches, cfg.rollout,
            cfg.precision, cfg.optimizer, cfg.stage, cfg.seq_len, cfg.grad_accum > 1, first,
            deepspeed_sizes.configuration())


def _strategy_parts(cfg: TrainConfig, *, first: bool) -> _StrategyParts:
    key = _strategy_key(cfg, first)
    parts = _STRATEGY_PARTS.get(key)
    if parts is None:
        if len(_STRATEGY_PARTS) >= _STRATEGY_PARTS_MAX:
            _STRATEGY_PARTS.clear()
        parts = _STRATEGY_PARTS[key] = _compute_strategy_parts(cfg, first=first)
    return parts


def _compute_strategy_parts(cfg: TrainConfig, *, first: bool) -> _StrategyParts:
    eng = engines.of(cfg)
    sp = stage_params(cfg, first=first)
    n = shard_group(cfg)
    states = model_states(cfg, sp, n)
    trained = sp.trainable
    items: dict[str, float] = {}
    items.update(eng.autocast_items(cfg, sp))
    items.update(dequantized_weight_items(cfg))
    if eng is engines.fsdp:
        items.update(eng.buffers(cfg, sp, trained, first=first, sixteen_bit_weights=sixteen_bit_weight_bytes(cfg, sp)))
        if cfg.ep > 1:  # a rank gathers only the experts it owns (planner/moe.py)
            params_saved, grads_saved = moe.ep_unsharded_saving_bytes(cfg, compute_copy_bytes(cfg.precision))
            for key, saved in (("FSDP unsharded parameters", params_saved), ("FSDP unsharded gradients", grads_saved)):
                if key in items:
                    items[key] = max(0.0, items[key] - saved)
    else:
        items.update(eng.buffers(cfg, sp, trained, first=first))
    state_bytes = optimizer_state_bytes_per_param(cfg.optimizer, cfg.precision)
    # the stage: DeepSpeed's pipeline engine (the only one with --pp > 1) steps each stage's own tensors
    step_items = eng.step_items(cfg, trained, n, state_bytes, sp)
    grads_in_backward = eng.backward_grad_bytes(cfg, trained, states.gradients)
    return _StrategyParts(sp=sp, states=states, items=items, step_items=step_items,
                          end_items=end_of_backward_items(cfg, sp),
                          grads_in_backward=grads_in_backward,
                          nccl_bytes=nccl_memory.nccl_bytes(cfg),
                          reserved_floor=init_allocations.reserved_floor_bytes(cfg),
                          zero3_free=_zero3_free_bytes(cfg, trained, n))


def _zero3_free_bytes(cfg: TrainConfig, trained: float, n: int) -> float | None:
    """The free bytes in the segments ZeRO-3's optimizer construction and first step leave reserved on a rank (the
    caching allocator's replay, planner.allocator.zero3_optimizer_replay); None where there is no replay. Per
    strategy: it reads no micro-batch, checkpointing or attention."""
    replay = allocator.zero3_optimizer_replay(cfg, allocator.zero3_sub_groups(cfg, trained, n), n)
    return None if replay is None else float(replay.reserve_bytes)


# A stage's activations do not depend on the optimizer, the ZeRO stage or the offload: the engine reaches them only
# through the LM head weight's dtype under the loss (memory_knobs.head_weight_compute_bytes) and through
# prepare_model_for_kbit_training (states.kbit_prepared), which the key carries as values. Strategies that differ
# only there share them.
_ACTIVATIONS: dict[tuple, tuple[float, dict[str, float]]] = {}


def _activations(cfg: TrainConfig, sp: StageParams, cal: Calibration, *, first: bool) -> tuple[float, dict[str, float]]:
    key = (cfg.model, cfg.cluster.gpu.name, cfg.adapter, cfg.layout, cfg.batch, cfg.switches,
           cfg.rollout.completion_len, cfg.precision, cfg.stage, cfg.grad_ckpt, cfg.attn, cal.activation_multiplier,
           first, sp, knobs.head_weight_compute_bytes(cfg, grad_dtype_bytes(cfg.precision)), kbit_prepared(cfg))
    hit = _ACTIVATIONS.get(key)
    if hit is None:
        if len(_ACTIVATIONS) >= _STRATEGY_PARTS_MAX:
            _ACTIVATIONS.clear()
        hit = _ACTIVATIONS[key] = activation_bytes(cfg, sp, cal, first=first)
    return hit[0], dict(hit[1])


def _stage_memory(cfg: TrainConfig, cal: Calibration, *, first: bool) -> MemoryBreakdown:
    parts = _strategy_parts(cfg, first=first)
    sp = parts.sp
    activations, items = _activations(cfg, sp, cal, first=first)
    items.update(parts.items)
    window = items.pop("FSDP unsharded layers", 0.0)
    layer_activations = activations / max(1, sp.trainable_layers)
    if window:
        # the last layer's backward begins once the head's is over: its window and the logits are never live
        # together (planner.engines.fsdp last_layer_window_exposed_bytes: the larger of its start and its end)
        # and, FSDP2's, the two gradients of the layer's last linear (fsdp2_first_linear_backward_bytes)
        first_linear = engines.fsdp.fsdp2_first_linear_backward_bytes(cfg, sp,
                                                                      cfg.micro_batch * tokens_per_sample(cfg))
        exposed = max(0.0, engines.fsdp.last_layer_window_exposed_bytes(cfg, sp, window, layer_activations,
                                                                         first_linear))
        if exposed > items.get("logits and loss", 0.0):
            items.pop("logits and loss", None)
            items["FSDP unsharded layers"] = exposed
    head_rs = items.pop(engines.fsdp.HEAD_REDUCE_SCATTER, 0.0)
    if head_rs > items.get("logits and loss", 0.0) + items.get("FSDP unsharded layers", 0.0):
        # FSDP2's tail reduces after the head's backward, before the last layer's: it takes the place of either
        items.pop("logits and loss", None)
        items.pop("FSDP unsharded layers", None)
        items[engines.fsdp.HEAD_REDUCE_SCATTER] = head_rs
    middle = engines.fsdp.fsdp2_layer_reduce_scatter_peak_bytes(cfg, sp, layer_activations, parts.grads_in_backward)
    held = ("logits and loss", "FSDP unsharded layers", engines.fsdp.HEAD_REDUCE_SCATTER, *engines.fsdp.KEPT_ITEMS)
    if middle > sum(items.get(k, 0.0) for k in held):
        # a decoder layer's reduce-scatter further down, the tail's parameters and the head's gradient freed by then
        for k in held:
            items.pop(k, None)
        items["FSDP unsharded layers"] = middle
    step_items = parts.step_items
    if cal.overhead_multiplier != 1.0:
        items = {k: v * cal.overhead_multiplier for k, v in items.items()}
        step_items = {k: v * cal.overhead_multiplier for k, v in step_items.items()}
    return _peak(cfg, parts.states, parts.grads_in_backward, activations, items, step_items, parts.end_items,
                 nccl=parts.nccl_bytes, reserved_floor=parts.reserved_floor, zero3_free=parts.zero3_free)


def _peak(cfg: TrainConfig, states: ModelStates, grads_in_backward: float, activations: float,
          items: dict[str, float], step_items: dict[str, float], end_items: dict[str, float] | None = None,
          *, nccl: float | None = None, reserved_floor: float = 0.0,
          zero3_free: float | None = None) -> MemoryBreakdown:
    """The largest of the three phases, with its breakdown, and the host / NVMe bytes per node. `end_items` live
    only at the end of backward (phase "gradients"); `nccl`: NCCL's buffers when already known; `reserved_floor`:
    what the reserved reading holds at least, whatever the step (planner.init_allocations: FSDP1's init cache);
    `zero3_free`: the free bytes ZeRO-3's replayed optimizer construction and step leave reserved
    (_zero3_free_bytes)."""
    end_items = end_items or {}
    gpu = cfg.cluster.gpu
    grads = states.gradients
    base = states.weights + grads + states.optimizer
    backward_only = BACKWARD_ONLY_ITEMS + knobs.fsdp_backward_only_items(cfg)
    buffers = sum(v for k, v in items.items() if k not in backward_only)
    transient = sum(v for k, v in items.items() if k in backward_only)
    # phase "backward": with accumulation, the gradients of earlier micro-batches are resident
    phase_a = base - grads + grads_in_backward + activations + buffers + transient
    phase_b = base + buffers + sum(end_items.values())
    phase_c = base + buffers + sum(step_items.values())
    phase = max((("backward", phase_a), ("gradients", phase_b), ("optimizer", phase_c)), key=lambda x: x[1])[0]
    if phase == "backward":
        other_items = dict(items)
        grads_shown, acts = grads_in_backward, activations
    else:
        other_items = {k: v for k, v in items.items() if k not in backward_only}
        if phase == "optimizer":
            other_items.update(step_items)
        else:
            other_items.update(end_items)
        grads_shown, acts = grads, 0.0
    tensors = states.weights + grads_shown + states.optimizer + acts + sum(other_items.values())
    transient = acts + sum(v for k, v in other_items.items() if k not in PERSISTENT_ITEMS)
    context = float(gpu.runtime_overhead_bytes)
    if nccl is None:
        nccl = nccl_memory.nccl_bytes(cfg)
    # where the loss's blocks are live at this peak, their replay is a floor under the reserve (planner.allocator)
    wanted = allocator.reserve_bytes(cfg, transient, loss_live="logits and loss" in other_items)
    if zero3_free is not None:
        # ZeRO-3's optimizer leaves segments its step cannot fill (planner.zero3_init_allocations); they stay reserved
        # for the run, so the reserved peak is at least the step's tensors plus their free part, whichever phase peaks
        wanted = max(wanted, phase_c + zero3_free - tensors)
    # the cache grows only while the card has room: a failed cudaMalloc makes the allocator free its cached
    # blocks and retry before it reports out of memory (c10/cuda/CUDACachingAllocator.cpp, `malloc`:
    # release_cached_blocks), so reserved memory stops at the card less what lives outside the allocator
    # FSDP1's init leaves segments cached that the step's blocks may reuse: the reading holds at least the floor. The
    # fit keeps the step's own reserve: those segments hold no live block, and a cudaMalloc short of room frees them
    floor = reserved_floor if gpu.sm_count else 0.0
    carried = max(wanted, floor - tensors)
    other_items["allocator reserve"] = min(carried, max(0.0, gpu.hbm_bytes - context - nccl - tensors))
    other_items["CUDA context and workspaces"] = context
    other_items["NCCL communicator buffers"] = nccl
    other = sum(other_items.values())

    ranks_per_node = cfg.cluster.gpus_per_node
    offloaded = (states.host_weights + states.host_gradients + states.host_optimizer) * ranks_per_node
    nvme = 0.0
    host = offloaded
    if cfg.offload_device is OffloadDevice.nvme:
        nvme = (states.host_optimizer + (states.host_weights if cfg.offload is Offload.all else 0.0)) * ranks_per_node
        host = offloaded - nvme
    # offloaded activations: the micro-batches a stage keeps in flight, every rank of the node
    host += knobs.offloaded_activation_bytes_per_micro_batch(cfg) * parallel.micro_batches_in_flight(cfg, first=True) \
        * ranks_per_node
    return MemoryBreakdown(weights=states.weights, gradients=grads_shown, optimizer=states.optimizer,
                           activations=acts, other=other, phase=phase, other_items=other_items, host_bytes=host,
                           nvme_bytes=nvme, reserve_wanted=wanted, tensor_bytes=tensors, reserved_floor=floor)


def resident_training_states(cfg: TrainConfig) -> dict[str, float]:
    """What a trainer holds between steps (while an online RL stage generates): weights and optimizer states
    (gradients are freed by the Trainer's zero_grad(set_to_none=True)) and the engine's persistent buffers, not those
    that live only in backward or in the optimizer step."""
    eng = engines.of(cfg)
    sp = stage_params(cfg, first=True)
    n = shard_group(cfg)
    states = model_states(cfg, sp, n)
    trained = sp.trainable
    if eng is engines.fsdp:
        items = eng.buffers(cfg, sp, trained, first=True, sixteen_bit_weights=sixteen_bit_weight_bytes(cfg, sp))
    else:
        items = eng.buffers(cfg, sp, trained, first=True)
    transient = BACKWARD_ONLY_ITEMS + knobs.fsdp_backward_only_items(cfg)
    return {"weights": states.weights, "optimizer": states.optimizer,
            "persistent buffers": sum(v for k, v in items.items() if k not in transient)}


# what planner.rl.memory builds the online RL stages' peak from (it cannot import this module: this one imports it)
_TRAINING = rl_memory.TrainingMemory(peak=training_memory_per_gpu, resident=resident_training_states,
                                     breakdown=MemoryBreakdown)
