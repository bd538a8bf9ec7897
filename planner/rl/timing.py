"""One optimizer step of an online RL stage: the policy's training step (planner.timing) plus, once per
generation, generating the completions, scoring them and pushing the new weights to vLLM.

TRL's step (trl/trainer/grpo_trainer.py `_prepare_inputs` / `_generate_and_score_completions`) runs these one
after the other, nothing overlapped: a generation every steps_per_generation x num_iterations micro-batches,
so every `generation_steps x num_iterations` optimizer steps, then no-grad forwards over the whole generation
batch for the old policy's log-probabilities (when generation runs ahead of the optimizer, or always with vLLM's
importance-sampling correction, GRPOConfig.vllm_importance_sampling_correction=True), for the reference's (beta
> 0) and for each reward model, then the micro-batches' forward and backward. A vLLM server generates while the
trainer waits (the blog "No GPU left behind", TRL 2025: training and generation GPUs take turns idling).

PPO (verl) adds the critic's value forward and its update, each as long as the critic model's training step.

With completions stopping at EOS (`completion_len_mean`, planner.rl.lengths) the training step and the scoring
forwards run at the length the trainer pads to (`trained_config`): TRL pads every process's whole generation batch
(per_device_train_batch_size x steps_per_generation completions) to its longest completion before it splits it
into micro-batches (trl/trainer/grpo_trainer.py `_generate_and_score_completions`: `pad(completion_ids, ...,
padding_side="right")`, then `_prepare_inputs`: `split_tensor_dict`), and the ranks meet at every gradient
reduction, so the step runs at the longest of every rank's generation batch together; verl (PPO) removes the
padding (actor/critic use_remove_padding, dynamic batches of ppo_max_token_len_per_gpu tokens: docs/perf/
perf_tuning.rst), so its passes follow the mean. Rates count the tokens a run has (prompt + the mean completion,
what TRL logs as num_tokens), not its padding, and MFU the model FLOPs of those tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from planner import compute as cp
from planner import deepspeed_sizes
from planner.calibration import DEFAULT, Calibration
from planner.comm import DEFAULT_COMM_EFFICIENCY
from planner.parallel_comm import dp_group
from planner.params import active_params
from planner.rl import generation as gen
from planner.rl import lengths
from planner.rl.memory import critic_config, old_logprobs, reward_spec
from planner.rl.parts import memo_by_parts, training_memo, training_part
from planner.rl.settings import Generation, lengths_vary, prompt_len
from planner.strategy import GradCkpt, Method, Stage, TrainConfig

RL_BREAKDOWN_KEYS = ("generation", "scoring", "weight_sync")


@dataclass(frozen=True, slots=True)
class TrainingTime:
    """What planner.timing hands in (it imports this module, so this one does not import it): the training step's
    time (a StepTime) and the StepTime class."""

    step: Callable[[TrainConfig, Calibration], Any]
    step_time: type


@lru_cache(maxsize=8192)
def _training_step(fn: Callable, cfg: TrainConfig, cal: Calibration, sizes: tuple) -> Any:
    """`fn(cfg, cal)`, memoized on the config, the calibration and `sizes` (deepspeed_sizes.configuration())."""
    return fn(cfg, cal)


def trained_length(cfg: TrainConfig) -> int:
    """Tokens per sequence of the training and scoring passes: seq_len when every completion runs to the cap;
    with completions stopping at EOS, the prompt + the longest completion of every rank's generation batch (TRL
    pads to it) or + the mean (verl's PPO removes padding), rounded up to a whole token."""
    r = cfg.rollout
    if not lengths_vary(r):
        return cfg.seq_len
    p = prompt_len(cfg.seq_len, r)
    if cfg.stage is Stage.ppo:
        return p + r.completion_len_mean
    rows = gen.rank_generation_batch(cfg) * cfg.world_size
    return p + min(r.completion_len, math.ceil(lengths.expected_longest(r.completion_len_mean, r.completion_len, rows)))


def trained_config(cfg: TrainConfig) -> TrainConfig:
    """The configuration its training step runs at: `cfg` itself, or with completions stopping at EOS its
    sequences at `trained_length` (memory keeps planning `cfg`: the peak is the longest batch)."""
    if not lengths_vary(cfg.rollout):
        return cfg
    length = trained_length(cfg)
    completion = length - prompt_len(cfg.seq_len, cfg.rollout)
    return replace(cfg, batch=replace(cfg.batch, seq_len=length),
                   rollout=replace(cfg.rollout, completion_len=completion, completion_len_mean=None))


def forward_pass_s(cfg: TrainConfig, train: Any) -> float:
    """A no-grad forward over the rank's generation batch, from the training step's own terms: the forward's
    share of its compute (1/3 with every weight trained, 1/2 frozen: backward is 2x or 1x the forward,
    planner.compute) and of its host dispatch (one pass of three, four with full recomputation)."""
    share = 1 / 3 if cfg.method is Method.full else 1 / 2
    passes = 4 if cfg.grad_ckpt is GradCkpt.full else 3
    per_step = train.breakdown_s["compute"] * share + train.breakdown_s["framework"] / passes
    return per_step * cfg.generation_steps


def generation_share(t: Any) -> float:
    """Generation's share of the step's time (0 for stages without generation)."""
    return t.breakdown_s.get("generation", 0.0) / t.step_time_s if t.step_time_s else 0.0


def rl_step_time(tt: TrainingTime, cfg: TrainConfig, cal: Calibration = DEFAULT) -> Any:
    """Seconds per optimizer step of GRPO / RLOO (or PPO), with `generation`, `scoring` and `weight_sync` beside
    the training step's parts; rates count the trained completions (prompt + completion tokens)."""
    trained = trained_config(cfg)
    # the training step's memos key on deepspeed_sizes.configuration() as the memory memos do: ZeRO's collectives read
    # the sizes a `configured` block sets (planner/engines/zero.py)
    sizes = deepspeed_sizes.configuration()
    if cfg.stage is Stage.ppo:
        actor_cfg = replace(trained, stage=Stage.sft)
        train = _training_step(tt.step, actor_cfg, cal, sizes)
        critic = _training_step(tt.step, critic_config(trained), cal, sizes)
    else:
        actor_cfg = trained
        train = training_memo(_training_step, tt.step, training_part(trained), cal, sizes)
        critic = None
    r = cfg.rollout
    terms = _rollout_terms(cfg, cal)
    fwd = forward_pass_s(actor_cfg, train)
    scoring = fwd * terms.scoring_passes
    if terms.reward_share is not None:
        scoring += fwd * terms.reward_share[0] / terms.reward_share[1]
    per_generation = r.generation_steps * r.num_iterations  # optimizer steps one generation feeds
    parts = dict(train.breakdown_s)
    if critic is not None:
        # the critic's value forward over the batch and its update; the reference forward rides in `scoring`
        scoring += forward_pass_s(actor_cfg, critic)
        parts = {k: v + critic.breakdown_s.get(k, 0.0) for k, v in parts.items()}
    parts["generation"] = terms.generation_s / per_generation
    parts["scoring"] = scoring / per_generation
    parts["weight_sync"] = terms.sync_s / per_generation
    step_s = sum(parts.values())
    gpus = terms.gpus
    samples = cfg.global_batch
    peak = terms.peak_flops_per_s
    model_flops = train.model_flops_per_step
    tokens = cfg.seq_len
    if trained is not cfg:  # the run's tokens, not the padding the trainer adds
        tokens = prompt_len(cfg.seq_len, r) + r.completion_len_mean
        model_flops = model_flops * tokens / trained.seq_len
    return tt.step_time(step_time_s=step_s, breakdown_s=parts, tokens_per_s=samples * tokens / step_s,
                    samples_per_s=samples / step_s, mfu=model_flops / (step_s * gpus * peak) if peak else 0.0,
                    hfu=train.hfu * train.step_time_s * cfg.world_size / (step_s * gpus),
                    model_flops_per_step=model_flops, dp_comm_total_s=train.dp_comm_total_s)


@dataclass(frozen=True, slots=True)
class _RolloutTerms:
    """The parts of an RL step that read no training strategy beyond its engine and data-parallel group."""

    generation_s: float  # one generation (planner.rl.generation.generation_time)
    sync_s: float  # one weight push to vLLM
    scoring_passes: int  # no-grad forwards of the policy (reference, old policy)
    reward_share: tuple[int, int] | None  # (reward model's, policy's) active parameters
    gpus: int  # training GPUs and the vLLM server's
    peak_flops_per_s: float


def _rollout_terms(cfg: TrainConfig, cal: Calibration) -> _RolloutTerms:
    """`_rollout_terms_of`, memoized: generation and the weight sync read the model, cluster, rollout, adapter
    (method, LoRA targets, quantization), the engine, ZeRO stage and FSDP strategy (gathers for generation), the
    TP / PP / DP degrees (the data-parallel group), precision, sequence length and the rank's generation batch
    (micro_batch x grad_accum), and the calibration's efficiencies; not the micro-batch split, checkpointing,
    attention, optimizer, offload or switches. Every batch shape and checkpointing of a strategy, and every
    optimizer and offload, shares it."""
    return memo_by_parts(_ROLLOUT_TERMS, (cfg.model, cfg.cluster, cfg.rollout, cfg.adapter, cal),
                         (cfg.engine, cfg.zero, cfg.fsdp, cfg.tp, cfg.pp, cfg.dp, cfg.precision, cfg.seq_len,
                          cfg.micro_batch * cfg.grad_accum),
                         lambda: _rollout_terms_of(cfg, cal))


_ROLLOUT_TERMS: dict[tuple, tuple[tuple, _RolloutTerms]] = {}


def _rollout_terms_of(cfg: TrainConfig, cal: Calibration) -> _RolloutTerms:
    r = cfg.rollout
    eff = cp.compute_efficiency(cfg.cluster.gpu.name, cal.compute_efficiency)
    comm_eff = cal.comm_efficiency if cal.comm_efficiency is not None else DEFAULT_COMM_EFFICIENCY
    group = dp_group(cfg.cluster, cfg.tp, cfg.pp, cfg.dp, comm_eff) if cfg.dp > 1 else None
    spec = reward_spec(cfg)
    return _RolloutTerms(generation_s=gen.generation_time(cfg, eff, group).total_s,
                         sync_s=gen.weight_sync_s(cfg, group),
                         scoring_passes=int(r.kl_beta > 0) + int(old_logprobs(cfg)),
                         reward_share=None if spec is None else (active_params(spec), active_params(cfg.model)),
                         gpus=cfg.world_size + (r.vllm_server_gpus if r.generation is Generation.vllm_server else 0),
                         peak_flops_per_s=cp.peak_flops_per_s(cfg.cluster.gpu, cfg.precision))
