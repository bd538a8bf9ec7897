"""A PPO plan as verl's configuration (verl 0.9.1, verl/trainer/config/ppo_trainer.yaml) and its launch line.

TRL 1.16 has no PPO trainer, so `--stage ppo` plans are handed to verl, whose hybrid engine matches what the
planner models for PPO (planner.rl.memory): actor, critic, reference and reward colocated on every GPU under
FSDP (actor_rollout_ref / critic `strategy: fsdp` or `fsdp2`, `fsdp_config.param_offload` / `optimizer_offload`
for --offload all), vLLM beside them (`rollout.name: vllm`, `gpu_memory_utilization`, `free_cache_engine` = sleep
mode, `tensor_model_parallel_size`), GAE advantages (`algorithm.adv_estimator: gae`) and the KL penalty in the
reward (`algorithm.use_kl_in_reward`, `kl_ctrl.kl_coef`). One plan step is one PPO iteration: train_batch_size
prompts x rollout.n responses = the plan's global batch, one mini-batch (one optimizer step of actor and critic),
micro-batches of the plan's size. The overrides are Hydra's `key=value` (what main_ppo takes on its command line);
tests/runner/test_verl_parser.py composes them onto verl's own ppo_trainer.yaml and runs verl's validate_config.
"""

from __future__ import annotations

from typing import Any

from planner.rl.settings import prompt_len
from planner.strategy import FsdpVersion, GradCkpt, Method, Offload, TrainConfig

VERL_VERSION = "0.9.1"
LAUNCH = "python3 -m verl.trainer.main_ppo"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


def verl_overrides(cfg: TrainConfig, *, model_path: str, data: str, learning_rate: float) -> dict[str, Any]:
    """The plan as verl settings, dotted key -> value (the launch line's `key=value`s, verl.yaml's mapping)."""
    r = cfg.rollout
    prompts = cfg.global_batch // r.num_generations
    lora = cfg.method is not Method.full
    offload = cfg.offload is Offload.all
    strategy = "fsdp2" if cfg.fsdp_version is FsdpVersion.TWO else "fsdp"
    ckpt = cfg.grad_ckpt is not GradCkpt.none
    critic_path = r.reward_model or model_path
    out: dict[str, Any] = {
        "algorithm.adv_estimator": "gae",
        "algorithm.use_kl_in_reward": r.kl_beta > 0,
        "algorithm.kl_ctrl.kl_coef": r.kl_beta,
        "data.train_files": data,
        "data.val_files": data,
        "data.train_batch_size": prompts,
        "data.max_prompt_length": prompt_len(cfg.seq_len, r),
        "data.max_response_length": r.completion_len,
        "data.filter_overlong_prompts": True,
        "actor_rollout_ref.model.path": model_path,
        "actor_rollout_ref.model.enable_gradient_checkpointing": ckpt,
        "actor_rollout_ref.model.lora_rank": cfg.lora_r if lora else 0,
        "actor_rollout_ref.model.lora_alpha": cfg.lora_alpha,
        "actor_rollout_ref.actor.strategy": strategy,
        "actor_rollout_ref.actor.ppo_mini_batch_size": prompts,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": cfg.micro_batch,
        "actor_rollout_ref.actor.ppo_epochs": 1,
        "actor_rollout_ref.actor.use_kl_loss": False,
        "actor_rollout_ref.actor.optim.lr": learning_rate,
        "actor_rollout_ref.actor.fsdp_config.param_offload": offload,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": offload,
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": r.num_generations,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": r.vllm_tp,
        "actor_rollout_ref.rollout.gpu_memory_utilization": r.vllm_memory,
        "actor_rollout_ref.rollout.free_cache_engine": r.vllm_sleep,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": cfg.micro_batch,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": cfg.micro_batch,
        "actor_rollout_ref.ref.fsdp_config.param_offload": offload,
        "critic.strategy": strategy,
        "critic.model.path": critic_path,
        "critic.model.enable_gradient_checkpointing": ckpt,
        "critic.model.lora_rank": cfg.lora_r if lora else 0,
        "critic.model.lora_alpha": cfg.lora_alpha,
        "critic.ppo_micro_batch_size_per_gpu": cfg.micro_batch,
        "critic.optim.lr": learning_rate,
        "trainer.nnodes": cfg.cluster.nodes,
        "trainer.n_gpus_per_node": cfg.cluster.gpus_per_node,
        "trainer.total_epochs": 1,
        "trainer.val_before_train": False,
        "trainer.logger": ["console"],
    }
    if lora:
        # vLLM gets the adapters merged into the base weights (what planner.rl.generation counts: the 16-bit model,
        # no LoRA serving), as TRL's weight sync does too
        out["actor_rollout_ref.model.lora.merge"] = True
    if r.reward_model:
        out["reward_model.enable"] = True
        out["reward_model.model.path"] = r.reward_model
    return out


def verl_command(overrides: dict[str, Any]) -> list[str]:
    """main_ppo's command line: every override as `key=value`."""
    return [*LAUNCH.split(), *(f"{k}={_value(v)}" for k, v in overrides.items())]


def verl_notes(cfg: TrainConfig) -> list[str]:
    return [f"verl {VERL_VERSION} PPO for {cfg} (written by ftplan): actor, critic, reference and reward on every GPU "
            "(FSDP), vLLM beside them",
            "run: DATA=train.parquet bash verl.sh (needs CUDA GPUs, Ray and vLLM; ftplan run does not run PPO)",
            "set actor_rollout_ref.model.path and data.train_files to yours (parquet with a 'prompt' column, as "
            "verl's examples/data_preprocess write)"]
