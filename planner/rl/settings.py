"""The rollout settings of an online RL plan, as TRL's GRPOConfig / RLOOConfig name them (trl 1.16,
trl/trainer/grpo_config.py), and the stages they apply to.

One optimizer step trains `global_batch` completions (GRPOConfig's per_device_train_batch_size counts
completions, not prompts): global_batch / num_generations prompts, each answered num_generations times. A
generation feeds `generation_steps` optimizer steps (GRPOConfig.steps_per_generation = generation_steps x
gradient_accumulation_steps, so generation_batch_size = generation_steps x the global batch), each trained
`num_iterations` times (GRPO's mu). A sequence is the prompt and its completion: `seq_len` = the longest prompt +
`completion_len` (TRL 1.16 has no max_prompt_length; vLLM's max_model_len is that sum).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from planner.choices import Stage

ONLINE_RL_STAGES = (Stage.grpo, Stage.rloo, Stage.ppo)
TRL_RL_STAGES = (Stage.grpo, Stage.rloo)  # run through TRL's trainers; ppo is handed to verl


class Generation(str, Enum):
    """Where completions are generated (GRPOConfig.use_vllm and vllm_mode)."""

    transformers = "transformers"  # the policy's own model.generate (use_vllm=False, TRL's default)
    vllm_colocate = "vllm-colocate"  # one vLLM engine inside each training process, sharing its GPU
    vllm_server = "vllm-server"  # `trl vllm-serve` on GPUs of their own; training waits for it


@dataclass(frozen=True, kw_only=True, slots=True)
class Rollout:
    """How completions are produced and scored. Defaults are GRPOConfig's (default_rollout gives each stage's)."""

    num_generations: int = 8  # G, completions per prompt (GRPOConfig.num_generations)
    completion_len: int = 512  # max_completion_length: the longest a completion may run (memory plans at it)
    # the completions' average length (they stop at EOS; planner.rl.lengths); None: every one runs to completion_len
    completion_len_mean: int | None = None
    kl_beta: float = 0.0  # KL coefficient: 0 loads no reference model (GRPOConfig.beta)
    generation: Generation = Generation.transformers
    vllm_memory: float = 0.3  # vllm_gpu_memory_utilization: colocated, TRL's 0.3; a server's own, 0.9
    vllm_sleep: bool = False  # vllm_enable_sleep_mode: weights and KV cache freed between generations
    vllm_server_gpus: int = 0  # GPUs of the cluster running `trl vllm-serve` (server mode)
    vllm_tp: int = 1  # vllm_tensor_parallel_size (colocated) / the server's --tensor-parallel-size
    generation_steps: int = 1  # optimizer steps one generation feeds (steps_per_generation / grad accumulation)
    num_iterations: int = 1  # mu: passes over each generation batch
    reward_model: str = ""  # "": rule reward functions; else a sequence-classification model (name or config)

    def __post_init__(self) -> None:
        if not isinstance(self.generation, Generation):  # from plan.json or a keyword: its value
            object.__setattr__(self, "generation", Generation(self.generation))


# TRL 1.16's defaults per stage (GRPOConfig: num_generations 8, beta 0.0; RLOOConfig: num_generations 2, beta 0.05;
# trl/trainer/rloo_config.py). PPO follows verl's ppo_trainer.yaml: one response per prompt (rollout.n = 1), the KL
# penalty in the reward (algorithm.kl_ctrl.kl_coef 0.001) with a reference model, and vLLM beside the models
# (actor_rollout_ref.rollout: name vllm, gpu_memory_utilization 0.5, free_cache_engine True: asleep while training).
STAGE_DEFAULTS: dict[Stage, dict[str, object]] = {
    Stage.grpo: {},
    Stage.rloo: {"num_generations": 2, "kl_beta": 0.05},
    Stage.ppo: {"num_generations": 1, "kl_beta": 0.001, "generation": Generation.vllm_colocate, "vllm_memory": 0.5,
                "vllm_sleep": True},
}


def default_rollout(stage: Stage) -> Rollout:
    return Rollout(**STAGE_DEFAULTS.get(stage, {}))  # type: ignore[arg-type]


def is_online_rl(stage: Stage) -> bool:
    return stage in ONLINE_RL_STAGES


def prompt_len(seq_len: int, rollout: Rollout) -> int:
    """Tokens of the longest prompt: the sequence less the completion."""
    return seq_len - rollout.completion_len


def lengths_vary(rollout: Rollout) -> bool:
    """Whether completions stop short of the cap on average (a mean below completion_len): generation and
    training then follow planner.rl.lengths; otherwise every completion is planned at completion_len."""
    mean = rollout.completion_len_mean
    return mean is not None and mean < rollout.completion_len


def rollout_problems(seq_len: int, global_batch: int, rollout: Rollout) -> list[str]:
    """Why these rollout settings cannot run (GRPOConfig.__post_init__'s checks, and the plan's own)."""
    out = []
    if rollout.completion_len < 1:
        out.append(f"--completion-len must be a positive integer, got {rollout.completion_len}")
    elif rollout.completion_len >= seq_len:
        out.append(f"--completion-len {rollout.completion_len} leaves no prompt within --seq-len {seq_len} "
                   "(a sequence is the prompt and its completion)")
    mean = rollout.completion_len_mean
    if mean is not None and rollout.completion_len >= 1 and not 1 <= mean <= rollout.completion_len:
        out.append(f"--completion-len-mean must be between 1 and --completion-len {rollout.completion_len} (the "
                   f"longest a completion runs), got {mean}")
    if rollout.num_generations < 1:
        out.append(f"--num-generations must be a positive integer, got {rollout.num_generations}")
    elif global_batch % rollout.num_generations:
        out.append(f"the global batch of {global_batch} completions does not hold whole groups of "
                   f"--num-generations {rollout.num_generations} (GRPOConfig: generation_batch_size must be "
                   "divisible by num_generations)")
    if not 0.0 < rollout.vllm_memory <= 1.0:
        out.append(f"--vllm-memory must be in (0, 1], got {rollout.vllm_memory}")
    if rollout.kl_beta < 0:
        out.append(f"--kl-beta must not be negative, got {rollout.kl_beta}")
    for name, value in (("--generation-steps", rollout.generation_steps), ("--num-iterations", rollout.num_iterations),
                        ("--vllm-tp", rollout.vllm_tp)):
        if value < 1:
            out.append(f"{name} must be a positive integer, got {value}")
    if rollout.vllm_server_gpus < 0:
        out.append(f"--vllm-server-gpus must not be negative, got {rollout.vllm_server_gpus}")
    return out


@dataclass(frozen=True, kw_only=True)
class RolloutSpace:
    """The generation settings `plan` searches (planner.rl.search); a field the user set holds that value alone."""

    generations: tuple[Generation, ...] = tuple(Generation)
    vllm_memory: float | None = None  # None: chosen per plan (planner.rl.search)
    vllm_sleep: tuple[bool, ...] = (False, True)
    vllm_server_gpus: tuple[int, ...] | None = None  # None: powers of two that leave a valid training cluster
    vllm_tp: int | None = None  # None: the smallest power of two whose engine holds the model
    generation_steps: tuple[int, ...] = (1, 2, 4)
