"""The files an online RL plan adds to `--emit` (runner.emit): for grpo / rloo the config of TRL's own scripts
(grpo_config.yaml / rloo_config.yaml: the GRPOConfig / RLOOConfig and ModelConfig fields `ftplan run` trains the plan
with, for `trl grpo --config` / `trl rloo --config`, with the launch line and the `trl vllm-serve` line a server plan
needs), for ppo verl's settings (verl.yaml) and its launch script (verl.sh)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from planner.configs.ds_config import learning_rate
from planner.input_checks import one_line
from planner.rl.settings import Generation
from planner.rl.verl import verl_command, verl_notes, verl_overrides
from planner.states import kbit_prepared
from planner.strategy import Engine, Method, Precision, Quant, Stage, TrainConfig
from runner import switches
from runner.launch import ACCELERATE_FILE, DS_TRAINER_CONFIG_FILE

VERL_FILE = "verl.yaml"
VERL_SCRIPT = "verl.sh"
FILE_ROLES = {"grpo_config.yaml": "trl grpo --config (GRPOConfig + ModelConfig)",
              "rloo_config.yaml": "trl rloo --config (RLOOConfig + ModelConfig)",
              VERL_FILE: "verl PPO settings (main_ppo overrides)", VERL_SCRIPT: "verl PPO launch line"}


def trl_config(cfg: TrainConfig) -> dict[str, Any]:
    """The trainer config's fields: what `ftplan run` hands GRPOConfig / RLOOConfig on the GPUs the plan is for
    (runner.run_common.training_fields with the stage's runner.stages.grpo.config_fields, field for field:
    tests/runner/test_trl_cli_config.py) less the run's own (output, length, logging, evaluation), which `trl grpo`'s
    command line gives; the seed and warm-up are `ftplan run`'s defaults (RunOptions). fp16 is written out: TRL's
    configs turn bf16 on unless fp16 is (trl/trainer/base_config.py). Activation offload is the Trainer's `offload` of
    the checkpointed layers (runner.run_common.emitted_checkpointing_fields); the header says how `ftplan run` applies
    it (trl_notes)."""
    from runner.run_common import RunOptions, emitted_checkpointing_fields, engine_fields, optim_args, trainer_optim
    from runner.stages.grpo import config_fields

    defaults = RunOptions(model_path=Path(), data=Path(), output=Path())
    ckpt = emitted_checkpointing_fields(cfg)
    engine = {k: v for k, v in engine_fields(cfg).items() if k != "parallelism_config"}  # not YAML: trl_notes
    return {"per_device_train_batch_size": cfg.micro_batch, "gradient_accumulation_steps": cfg.grad_accum,
            "learning_rate": learning_rate(cfg), "lr_scheduler_type": "linear", "warmup_steps": defaults.warmup_steps,
            "optim": trainer_optim(cfg), **({"optim_args": optim_args(cfg)} if optim_args(cfg) else {}),
            **ckpt, "bf16": cfg.precision is Precision.bf16_mixed, "fp16": cfg.precision is Precision.fp16_mixed,
            "seed": defaults.seed, "data_seed": defaults.seed, "remove_unused_columns": False,
            "dataloader_num_workers": 0,
            **({"ddp_find_unused_parameters": False} if cfg.engine is Engine.ddp else {}),
            **config_fields(cfg, None), **switches.trainer_arguments(cfg), **switches.accelerator_config_field(cfg),
            **engine}


def model_config(cfg: TrainConfig, model_path: str) -> dict[str, Any]:
    """TRL's ModelConfig fields (trl/trainer/model_config.py), which TRL's grpo / rloo scripts load the policy with
    (trl/scripts/grpo.py: model_init_kwargs from dtype and attn_implementation; get_peft_config, get_quantization_config
    in trl/trainer/utils.py): the load dtype, attention and LoRA of runner.model.load_model / lora_config, and
    bitsandbytes' settings of runner.quant.bnb_config_dict. ModelConfig turns a one-item lora_target_modules into a
    string, which peft matches as a regular expression against whole module names (peft tuners_utils.py
    check_target_module_exists), so one target is written as the pattern that matches what the list would."""
    from runner.model import attn_name, load_dtype_name, lora_target_modules
    from runner.quant import bnb_config_dict

    out: dict[str, Any] = {"model_name_or_path": model_path, "dtype": load_dtype_name(cfg),
                           "attn_implementation": attn_name(cfg)}
    if cfg.method is not Method.full:
        targets = lora_target_modules(cfg)
        if isinstance(targets, list) and len(targets) == 1:
            targets = rf"(.*\.)?{re.escape(targets[0])}"
        out |= {"use_peft": True, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                "lora_dropout": cfg.lora_dropout, "lora_target_modules": targets}
    bnb = bnb_config_dict(cfg) or {}
    if bnb.get("load_in_8bit"):
        out["load_in_8bit"] = True
    if bnb.get("load_in_4bit"):
        out |= {"load_in_4bit": True, "bnb_4bit_quant_type": bnb["bnb_4bit_quant_type"],
                "use_bnb_nested_quant": bnb["bnb_4bit_use_double_quant"],
                **({"bnb_4bit_quant_storage": bnb["bnb_4bit_quant_storage"]} if "bnb_4bit_quant_storage" in bnb
                   else {})}
    return out


def trl_notes(cfg: TrainConfig) -> list[str]:
    """What the TRL script runs differently from `ftplan run` for this plan, for the config's header."""
    from runner.model import load_dtype_name
    from runner.quant import compute_dtype_name
    from runner.run_common import engine_fields

    out = list(switches.trl_notes(cfg))
    trainer = "RLOOTrainer" if cfg.stage is Stage.rloo else "GRPOTrainer"
    if cfg.quant is Quant.nf4 and compute_dtype_name(cfg, on_cuda=True) != load_dtype_name(cfg):
        out.append(f"QLoRA: TRL's script computes the 4-bit matmuls in `dtype` ({load_dtype_name(cfg)}; "
                   "trl/trainer/utils.py get_quantization_config), the plan in "
                   f"{compute_dtype_name(cfg, on_cuda=True)} (bnb_config.json's bnb_4bit_compute_dtype, what `ftplan "
                   f"run` loads): a script of your own passes {trainer}(quantization_config=BitsAndBytesConfig("
                   "**bnb_config.json)) with load_in_4bit left off here.")
    if kbit_prepared(cfg):
        out.append("QLoRA: `ftplan run` casts the unquantized weights to fp32 through peft's "
                   "prepare_model_for_kbit_training (the plan's --kbit-prep); TRL's script does not: plan with "
                   "--no-kbit-prep for its memory, or call it in a script of your own.")
    if "parallelism_config" in engine_fields(cfg):
        out.append("FSDP2 hybrid shard: TRL's config cannot hold accelerate's ParallelismConfig; accelerate.yaml's "
                   "parallelism_config section carries the replica and shard sizes.")
    offload = switches.activation_offload_note(cfg)
    return out + ([offload] if offload else [])


def launch_line(cfg: TrainConfig, where: Path) -> str:
    """`trl grpo` / `trl rloo` with this config and accelerate's (trl/cli/accelerate_config.py: --accelerate_config
    becomes `accelerate launch --config_file`), which starts the plan's processes."""
    return (f"run: trl {cfg.stage.value} --config {where / f'{cfg.stage.value}_config.yaml'} --accelerate_config "
            f"{where / ACCELERATE_FILE} --dataset_name YOUR_PROMPTS --reward_funcs YOUR_REWARD "
            "(model_name_or_path below: set it to your model directory)")


def engine_line(cfg: TrainConfig) -> str | None:
    if cfg.engine is Engine.deepspeed:
        return (f"DeepSpeed: the `deepspeed` field is {DS_TRAINER_CONFIG_FILE} (the Trainer fills its \"auto\" values "
                f"from these fields), as `ftplan run` passes it; accelerate.yaml starts the {cfg.world_size} processes")
    if cfg.engine is Engine.fsdp and cfg.world_size > 1:
        return ("FSDP: the `fsdp` / `fsdp_config` fields are what `ftplan run` passes the Trainer; accelerate.yaml "
                f"starts the {cfg.world_size} processes")
    return None


def server_command(cfg: TrainConfig, model_path: str) -> str:
    r = cfg.rollout
    dp = r.vllm_server_gpus // r.vllm_tp
    return (f"CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(r.vllm_server_gpus))} trl vllm-serve --model "
            f"{model_path} --tensor-parallel-size {r.vllm_tp} --data-parallel-size {dp} --gpu-memory-utilization "
            f"{r.vllm_memory:g} --max-model-len {cfg.seq_len}")


def rl_files(cfg: TrainConfig, model_path: str, where: Path) -> dict[str, str]:
    """`where`: the emit directory, absolute, as the launch line names its files."""
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
    lines = [f"TRL {cfg.stage.value.upper()} fields for {cfg} (written by ftplan): "
             f"{'GRPOConfig' if cfg.stage is Stage.grpo else 'RLOOConfig'} and ModelConfig, as `ftplan run` trains it",
             launch_line(cfg, where)]
    engine = engine_line(cfg)
    if engine:
        lines.append(engine)
    if cfg.rollout.generation is Generation.vllm_server:
        lines.append(f"start the vLLM server first, on {cfg.vllm_server_gpus} GPUs of its own: "
                     f"{server_command(cfg, model_path)}")
        lines.append(f"then train on the other {cfg.world_size} GPUs (CUDA_VISIBLE_DEVICES set past the server's)")
    lines += trl_notes(cfg)
    head = "".join(f"# {one_line(line)}\n" for line in lines)
    return {name: head + yaml.safe_dump({**trl_config(cfg), **model_config(cfg, model_path)}, sort_keys=False)}
