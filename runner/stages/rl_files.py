"""The files an online RL plan adds to `--emit` (runner.emit): for grpo / rloo the TRL trainer config
(grpo_config.yaml / rloo_config.yaml: the GRPOConfig / RLOOConfig fields the plan sets, with the `trl vllm-serve`
line a server plan needs), for ppo verl's settings (verl.yaml) and its launch script (verl.sh)."""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from planner.configs.ds_config import learning_rate
from planner.rl.settings import Generation
from planner.rl.verl import verl_command, verl_notes, verl_overrides
from planner.strategy import GradCkpt, Precision, Stage, TrainConfig
from runner import switches

VERL_FILE = "verl.yaml"
VERL_SCRIPT = "verl.sh"
FILE_ROLES = {"grpo_config.yaml": "TRL GRPOConfig fields (GRPOTrainer)", "rloo_config.yaml": "TRL RLOOConfig fields",
              VERL_FILE: "verl PPO settings (main_ppo overrides)", VERL_SCRIPT: "verl PPO launch line"}


def trl_config(cfg: TrainConfig) -> dict[str, Any]:
    """The trainer config's fields: the batch, optimizer and precision, the plan's rollout settings
    (runner.stages.grpo.rollout_fields), and the switches `ftplan run` hands the same config class
    (runner.run_common.training_arguments): Liger's kernels, torch_compile and --sync-each-batch's accelerator_config
    (runner.switches). fp16 is written out: TRL's configs turn bf16 on unless fp16 is (trl/trainer/base_config.py)."""
    from runner.run_common import optim_args, trainer_optim
    from runner.stages.grpo import rollout_fields

    return {"per_device_train_batch_size": cfg.micro_batch, "gradient_accumulation_steps": cfg.grad_accum,
            "learning_rate": learning_rate(cfg), "optim": trainer_optim(cfg),
            **({"optim_args": optim_args(cfg)} if optim_args(cfg) else {}),
            "activation_checkpointing": cfg.grad_ckpt is not GradCkpt.none,
            "bf16": cfg.precision is Precision.bf16_mixed, "fp16": cfg.precision is Precision.fp16_mixed,
            **rollout_fields(cfg), **switches.trainer_arguments(cfg), **switches.accelerator_config_field(cfg)}


def server_command(cfg: TrainConfig, model_path: str) -> str:
    r = cfg.rollout
    dp = r.vllm_server_gpus // r.vllm_tp
    return (f"CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(r.vllm_server_gpus))} trl vllm-serve --model "
            f"{model_path} --tensor-parallel-size {r.vllm_tp} --data-parallel-size {dp} --gpu-memory-utilization "
            f"{r.vllm_memory:g} --max-model-len {cfg.seq_len}")


def rl_files(cfg: TrainConfig, model_path: str) -> dict[str, str]:
    if cfg.stage is Stage.ppo:
        overrides = verl_overrides(cfg, model_path=model_path, data="${DATA:-train.parquet}",
                                   learning_rate=learning_rate(cfg))
        head = "".join(f"# {line}\n" for line in verl_notes(cfg))
        script = "#!/usr/bin/env bash\n" + head + "set -euo pipefail\n" + " \\\n  ".join(
            shlex.quote(a) if "$" not in a else f'"{a}"' for a in verl_command(overrides)) + "\n"
        return {VERL_FILE: head + yaml.safe_dump(overrides, sort_keys=False), VERL_SCRIPT: script}
    if cfg.stage not in (Stage.grpo, Stage.rloo):
        return {}
    name = f"{cfg.stage.value}_config.yaml"
    lines = [f"TRL {cfg.stage.value.upper()} trainer fields for {cfg} (written by ftplan): "
             f"{'GRPOConfig' if cfg.stage is Stage.grpo else 'RLOOConfig'}(**this)"]
    if cfg.rollout.generation is Generation.vllm_server:
        lines.append(f"start the vLLM server first, on {cfg.vllm_server_gpus} GPUs of its own: "
                     f"{server_command(cfg, model_path)}")
        lines.append(f"then train on the other {cfg.world_size} GPUs (CUDA_VISIBLE_DEVICES set past the server's)")
    lines += switches.trl_notes(cfg)
    head = "".join(f"# {line}\n" for line in lines)
    return {name: head + yaml.safe_dump(trl_config(cfg), sort_keys=False)}
