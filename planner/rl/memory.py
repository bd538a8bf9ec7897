"""Peak memory per GPU of an online RL step: the policy's training step (planner.memory) plus what RL adds.

GRPO / RLOO (TRL's trainers, trl/trainer/grpo_trainer.py and rloo_trainer.py), on every training GPU:
- the reference model: none when beta = 0 (GRPOConfig's default) or under peft (the base with the adapter
  disabled, `use_adapter(model, adapter_name=None)`), else a copy built with the policy's dtype
  (`model_init_kwargs.setdefault("dtype", self.model.dtype)`) and prepared like the policy (DeepSpeed casts it to
  16 bits and ZeRO-3 shards it, FSDP shards it): counted as DPO's reference is in planner.memory;
- reward models: each a sequence-classification copy of its checkpoint (AutoModelForSequenceClassification,
  num_labels=1) in 16 bits (fp32 in fp32 plans), sharded under ZeRO-3 / FSDP; rule functions hold nothing;
- the buffered generation batch (`_buffered_inputs`): prompt and completion ids and masks (int64) for every
  sequence the rank generated, and fp32 per-token log-probabilities of the completions (the reference's when
  beta > 0, the old policy's when generation runs ahead of the optimizer or vLLM's importance sampling is on, and
  vLLM's own sampling log-probabilities);
- the generation engine: vLLM colocated takes u x the GPU's memory for the whole run, or only while it generates
  with sleep mode; transformers' generate adds its KV cache, sampling logits and prefill transients while it
  runs (planner.rl.generation); a vLLM server lives on GPUs of its own (its memory is checked apart).
The peak is the larger of the training step (with what stays resident) and the generation phase: the trainer's
weights and optimizer states (gradients are freed by the Trainer's zero_grad(set_to_none=True)), the persistent
engine buffers, the resident RL parts and the engine's generation memory.

PPO (handed to verl, planner.rl.verl): actor, critic, reference and reward models colocated on every GPU (verl's
hybrid engine, FSDP), vLLM asleep while they train (free_cache_engine): the peak is the largest of the actor's
update, the critic's update (the actor's memory with a one-output value head instead of the LM head's loss
buffers) and the rollout, each with the other models' resident states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from planner import deepspeed_sizes, engines
from planner.calibration import DEFAULT, Calibration
from planner.models import ModelSpec, resolve
from planner.params import total_params
from planner.rl import generation as gen
from planner.rl.parts import memo_by_parts, training_memo, training_part
from planner.rl.settings import Generation
from planner.states import compute_copy_bytes, stage_params
from planner.strategy import Engine, FsdpStrategy, Method, Stage, TrainConfig, ZeroStage

_CONTEXT = "CUDA context and workspaces"
_RESERVE = "allocator reserve"
_NCCL = "NCCL communicator buffers"


def reward_spec(cfg: TrainConfig) -> ModelSpec | None:
    """The reward model's shape (`reward_model`: a catalog name, config.json or directory), None for rule rewards."""
    return resolve(cfg.rollout.reward_model) if cfg.rollout.reward_model else None


def _shard_group(cfg: TrainConfig) -> int:
    """Ranks a sharded state is split over (planner.memory.shard_group): FSDP's hybrid shards within a node."""
    if cfg.fsdp is FsdpStrategy.hybrid_shard:
        return engines.fsdp.shard_group(cfg)
    return cfg.dp


def shards_frozen_models(cfg: TrainConfig) -> bool:
    """Whether frozen helper models are sharded over the data-parallel group: ZeRO-3 (prepare_deepspeed keeps
    stage 3) and FSDP (prepare_fsdp) shard them; otherwise every rank holds them whole."""
    return (cfg.engine is Engine.deepspeed and cfg.zero is ZeroStage.WEIGHTS) or cfg.engine is Engine.fsdp


def reference_bytes(cfg: TrainConfig) -> float:
    """The frozen reference policy per GPU: none without a KL term or under peft, else the policy's weights in
    the policy's dtype (DeepSpeed: 16 bits), sharded where the engine shards."""
    if cfg.rollout.kl_beta == 0.0 or cfg.method is not Method.full:
        return 0.0
    sp = stage_params(cfg, first=True)
    trainable_w_bytes, _ = engines.of(cfg).weight_bytes_per_param(cfg)
    if cfg.engine is Engine.deepspeed:
        trainable_w_bytes = compute_copy_bytes(cfg.precision)
    ref = sp.total * trainable_w_bytes
    return ref / _shard_group(cfg) if shards_frozen_models(cfg) else ref


def reward_model_bytes(cfg: TrainConfig) -> float:
    """A sequence-classification reward model per GPU: its body and a one-output score head, in 16 bits."""
    spec = reward_spec(cfg)
    if spec is None:
        return 0.0
    params = total_params(spec) - spec.vocab_size * spec.hidden_size * (0 if spec.tie_embeddings else 1) \
        + spec.hidden_size
    w = params * compute_copy_bytes(cfg.precision)
    return w / _shard_group(cfg) if shards_frozen_models(cfg) else w


def old_logprobs(cfg: TrainConfig) -> bool:
    """Whether TRL runs a no-grad forward of the policy for the old log-probabilities: when generation does not
    fall on an optimizer step (gradient_accumulation_steps % (steps_per_generation x num_iterations) != 0, i.e.
    one generation feeds several steps) or with vLLM (its importance-sampling correction is on by default)."""
    r = cfg.rollout
    return r.generation is not Generation.transformers or r.generation_steps * r.num_iterations > 1


def logprob_buffers(cfg: TrainConfig) -> int:
    """fp32 per-token log-probability tensors kept per completion: the reference's, the old policy's and vLLM's
    sampling log-probabilities, where they exist."""
    r = cfg.rollout
    return int(r.kl_beta > 0) + int(old_logprobs(cfg)) + int(r.generation is not Generation.transformers)


def generations_bytes(cfg: TrainConfig) -> float:
    """The rank's buffered generation batch: ids and masks of prompt and completion (int64) and the completions'
    fp32 log-probabilities."""
    b = gen.rank_generation_batch(cfg)
    return b * (cfg.seq_len * 2 * 8.0 + cfg.rollout.completion_len * 4.0 * logprob_buffers(cfg))


@dataclass(frozen=True, slots=True)
class TrainingMemory:
    """What planner.memory hands in (it imports this module, so this one does not import it): the peak of a
    training step (a MemoryBreakdown), the states a trainer keeps between steps, and the breakdown's class."""

    peak: Callable[[TrainConfig, Calibration], Any]
    resident: Callable[[TrainConfig], dict[str, float]]
    breakdown: type


@lru_cache(maxsize=8192)
def _cached(fn: Callable, cfg: TrainConfig, sizes: tuple, *args: Any) -> Any:
    """`fn(cfg, *args)`, memoized on the config's value and on `sizes`, the DeepSpeed sizes a
    `deepspeed_sizes.configured` block sets (deepspeed_sizes.configuration()): the training step's DeepSpeed buffers
    and ZeRO-3's replayed optimizer construction read them, as planner.memory's strategy-parts memo keys on them."""
    return fn(cfg, *args)


def training_memory(tm: TrainingMemory, cfg: TrainConfig, cal: Calibration) -> Any:
    """The policy's training step, once per strategy whatever the generation settings (the search's hot path)."""
    return training_memo(_cached, tm.peak, training_part(cfg), deepspeed_sizes.configuration(), cal)


def resident_states(tm: TrainingMemory, cfg: TrainConfig) -> dict[str, float]:
    return training_memo(_resident_cached, tm.resident, training_part(cfg), deepspeed_sizes.configuration())


def _resident_cached(fn: Callable, part: TrainConfig, sizes: tuple) -> dict[str, float]:
    """The trainer's resident states, memoized on what they read: the fields of planner.memory's strategy key
    (`_strategy_key`: weights, optimizer states and the engine's buffers at the first stage read no micro-batch,
    checkpointing or attention, and of the accumulation only whether there is any), and like it on `sizes`
    (deepspeed_sizes.configuration(): DeepSpeed's buffers read the sizes a `configured` block sets), so every batch
    shape and checkpointing of a strategy shares them."""
    return memo_by_parts(_RESIDENT, (fn, part.model, part.cluster, part.adapter, part.layout, part.engine_choice,
                                     part.switches, part.rollout),
                         (part.precision, part.optimizer, part.stage, part.seq_len, part.grad_accum > 1, sizes),
                         lambda: fn(part))


_RESIDENT: dict[tuple, tuple[tuple, dict[str, float]]] = {}


def _training_of(tm: TrainingMemory, cfg: TrainConfig, cal: Calibration) -> tuple[Any, dict[str, float], float]:
    """The training step's peak, the resident states and their sum, found in one lookup by the training part's
    identity (each candidate asks for the three together)."""
    part = training_part(cfg)
    sizes = deepspeed_sizes.configuration()
    key = (id(part), id(tm), id(cal), sizes)
    hit = _TRAINING_OF.get(key)
    if hit is None:
        if len(_TRAINING_OF) >= 8192:
            _TRAINING_OF.clear()
        states = resident_states(tm, part)
        hit = _TRAINING_OF[key] = ((part, tm, cal), training_memo(_cached, tm.peak, part, sizes, cal), states,
                                   _states_total(states))
    return hit[1], hit[2], hit[3]


_TRAINING_OF: dict[tuple, tuple[tuple, Any, dict[str, float], float]] = {}


def vllm_colocated_bytes(cfg: TrainConfig) -> float:
    """vLLM's share of a training GPU: u x its memory (vllm_gpu_memory_utilization)."""
    if cfg.rollout.generation is not Generation.vllm_colocate:
        return 0.0
    return cfg.rollout.vllm_memory * cfg.cluster.gpu.hbm_bytes


def generation_engine_items(cfg: TrainConfig) -> dict[str, float]:
    """What generation itself holds while it runs, per training GPU."""
    r = cfg.rollout
    if r.generation is Generation.transformers:
        return gen.transformers_generation_items(cfg)
    if r.generation is Generation.vllm_colocate:
        return {"vLLM (gpu_memory_utilization)": vllm_colocated_bytes(cfg)}
    return {}


def rl_memory_per_gpu(tm: TrainingMemory, cfg: TrainConfig, cal: Calibration = DEFAULT) -> Any:
    """The stage's peak per GPU, a MemoryBreakdown (planner.memory.memory_per_gpu calls this for online RL)."""
    if cfg.stage is Stage.ppo:
        return ppo_memory_per_gpu(tm, cfg, cal)
    train, states, states_total = _training_of(tm, cfg, cal)
    return _combine(tm, cfg, train, _rl_parts(cfg), states_total, states)


def _rl_parts(cfg: TrainConfig) -> _Beside:
    """What RL holds beside the training step (`_rl_parts_of`), memoized: it reads the model, cluster, adapter,
    layout, engine choice, switches, rollout, precision, stage and sequence length, and of the batch only the
    rank's generation batch (micro_batch x grad_accum); not the micro-batch split, checkpointing, attention or
    optimizer (the key carries the optimizer all the same). Every batch shape and checkpointing of a strategy
    shares it."""
    return memo_by_parts(_RL_PARTS, (cfg.model, cfg.cluster, cfg.adapter, cfg.layout, cfg.engine_choice,
                                     cfg.switches, cfg.rollout),
                         (cfg.precision, cfg.optimizer, cfg.stage, cfg.seq_len, cfg.micro_batch * cfg.grad_accum),
                         lambda: _rl_parts_of(cfg))


_RL_PARTS: dict[tuple, tuple[tuple, _Beside]] = {}


def _rl_parts_of(cfg: TrainConfig) -> _Beside:
    resident = {"reference model": reference_bytes(cfg), "reward model": reward_model_bytes(cfg),
                "buffered generations": generations_bytes(cfg)}
    vllm = vllm_colocated_bytes(cfg)
    if vllm and not cfg.rollout.vllm_sleep:
        resident["vLLM (gpu_memory_utilization)"] = vllm
    engine = {k: v for k, v in generation_engine_items(cfg).items() if k not in resident}
    return _beside(resident, engine)


_WEIGHT_ITEMS = ("reference model", "reward model")


@dataclass(frozen=True, slots=True)
class _Beside:
    """The RL parts beside a training step, summed as `_combine` sums them: the resident parts that hold memory,
    their frozen weights, the others, and the generation engine's items."""

    resident: dict[str, float]
    frozen_weights: float
    other_resident: dict[str, float]
    resident_total: float
    engine_items: dict[str, float]
    engine_total: float


def _beside(resident: dict[str, float], engine_items: dict[str, float]) -> _Beside:
    resident = {k: v for k, v in resident.items() if v}
    return _Beside(resident=resident, frozen_weights=sum(v for k, v in resident.items() if k in _WEIGHT_ITEMS),
                   other_resident={k: v for k, v in resident.items() if k not in _WEIGHT_ITEMS},
                   resident_total=sum(resident.values()), engine_items=engine_items,
                   engine_total=sum(engine_items.values()))


def _states_total(states: dict[str, float]) -> float:
    return sum(states.values())


def _combine(tm: TrainingMemory, cfg: TrainConfig, train: Any, beside: _Beside, states_total: float,
             states: dict[str, float]) -> Any:
    """The larger of the training step with the resident RL parts beside it and the generation phase (the
    trainer's resident `states`, the resident RL parts and the engine's generation memory), with the CUDA context
    and the allocator reserve on the new peak."""
    gpu = cfg.cluster.gpu
    tensors = train.allocated  # planner.memory's allocated reading: the training step's tensors
    training_total = tensors + beside.resident_total
    generating = states_total + beside.resident_total + beside.engine_total
    if generating > training_total:
        weights, optimizer = states["weights"] + beside.frozen_weights, states["optimizer"]
        other = {"persistent buffers": states["persistent buffers"], **beside.other_resident, **beside.engine_items}
        other = {k: v for k, v in other.items() if v}
        grads, acts, phase, peak = 0.0, 0.0, "generation", generating
    else:
        weights, optimizer = train.weights + beside.frozen_weights, train.optimizer
        grads, acts = train.gradients, train.activations
        other = {**_kept_items(train), **beside.other_resident}
        phase, peak = train.phase, training_total
    # the readings of planner.memory (_peak), with its rules: the training step's allocator reserve (its transient
    # tensors; under ZeRO-3 at least the free part of the segments its replayed optimizer construction leaves, which
    # `reserve_wanted` carries: on the training peak the reserved reading is then at least the step's tensors plus
    # that free part, and on a larger generation peak more), raised to FSDP1's init floor on a GPU (the floor holds
    # whatever the phase: the reserved reading is at least `reserved_floor`), capped by what the card has left beside
    # the CUDA context and NCCL's buffers outside the allocator
    context, nccl = float(gpu.runtime_overhead_bytes), train.other_items.get(_NCCL, 0.0)
    carried = max(train.reserve_wanted, train.reserved_floor - peak)
    other[_RESERVE] = min(carried, max(0.0, gpu.hbm_bytes - context - nccl - peak))
    other[_CONTEXT] = context
    other[_NCCL] = nccl
    return tm.breakdown(weights=weights, gradients=grads, optimizer=optimizer, activations=acts,
                           other=sum(other.values()), phase=phase, other_items=other, host_bytes=train.host_bytes,
                           nvme_bytes=train.nvme_bytes, reserve_wanted=train.reserve_wanted, tensor_bytes=peak,
                           reserved_floor=train.reserved_floor)


def _kept_items(train: Any) -> dict[str, float]:
    """The training step's other items but the CUDA context, the allocator reserve and NCCL's buffers (`_combine`
    puts them back on the new peak), once per training step (the dict is only read)."""
    hit = _KEPT.get(id(train))
    if hit is None or hit[0] is not train:
        if len(_KEPT) >= 8192:
            _KEPT.clear()
        hit = _KEPT[id(train)] = (train, {k: v for k, v in train.other_items.items()
                                          if k not in (_CONTEXT, _RESERVE, _NCCL)})
    return hit[1]


_KEPT: dict[int, tuple[Any, dict[str, float]]] = {}


# --- PPO (verl) ------------------------------------------------------------------------------------

def critic_config(cfg: TrainConfig) -> TrainConfig:
    """The critic as verl builds it: the reward model's architecture when one is named (critic.model.path
    defaults to the actor's, examples start it from the reward model), trained with the actor's method."""
    spec = reward_spec(cfg) or cfg.model
    return replace(cfg, model=spec, stage=Stage.sft)


def ppo_memory_per_gpu(tm: TrainingMemory, cfg: TrainConfig, cal: Calibration = DEFAULT) -> Any:
    actor_cfg, critic_cfg = replace(cfg, stage=Stage.sft), critic_config(cfg)
    actor = training_memory(tm, actor_cfg, cal)
    critic = training_memory(tm, critic_cfg, cal)
    # the value head emits one number per token: no vocabulary-wide logits or loss buffers
    critic_items = {k: v for k, v in critic.other_items.items() if k != "logits and loss"}
    critic = replace(critic, other=sum(critic_items.values()), other_items=critic_items)
    actor_states, critic_states = resident_states(tm, actor_cfg), resident_states(tm, critic_cfg)
    frozen = {"reference model": reference_bytes(actor_cfg) if cfg.rollout.kl_beta else 0.0,
              "reward model": reward_model_bytes(cfg)}
    vllm = vllm_colocated_bytes(cfg)
    asleep = {} if cfg.rollout.vllm_sleep or not vllm else {"vLLM (gpu_memory_utilization)": vllm}
    engine = {"vLLM (gpu_memory_utilization)": vllm} if asleep == {} and vllm else {}
    critic_beside = {**frozen, **asleep, "critic (weights, optimizer)": sum(critic_states.values())}
    actor_beside = {**frozen, **asleep, "actor (weights, optimizer)": sum(actor_states.values())}
    by_actor = _combine(tm, cfg, actor, _beside(critic_beside, engine), _states_total(actor_states), actor_states)
    by_critic = _combine(tm, cfg, critic, _beside(actor_beside, engine), _states_total(critic_states),
                         critic_states)
    return by_actor if by_actor.total >= by_critic.total else by_critic
