"""grpo_config.yaml / rloo_config.yaml run what `ftplan run` runs: parsed by the parser of `trl grpo` / `trl rloo`
(trl/scripts/grpo.py and rloo.py make_parser: the script's arguments, GRPOConfig / RLOOConfig, ModelConfig and the
dataset mixture, the YAML's keys becoming its defaults), every trainer field equals the one `ftplan run` hands the
config class (runner.run_common.training_fields with the stage's fields) but the run's own (output, length, logging,
evaluation), and the model fields load the policy as runner.model.load_model does: dtype, attention, LoRA through
TRL's get_peft_config, bitsandbytes through get_quantization_config. What TRL's script cannot run as `ftplan run` does
is in the header, and the header's launch line names the accelerate.yaml that starts the plan's processes."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from unittest import mock

import pytest
import yaml

from planner.build import build_config
from planner.rl.settings import Generation
from planner.strategy import FsdpStrategy, GradCkpt, Method, Precision, Quant, Stage, TrainConfig
from runner.emit import emit
from runner.run_common import RunOptions, training_fields
from runner.stages import grpo

pytest.importorskip("trl")

# TrainingArguments fields that belong to the run, not the plan: `trl grpo`'s command line or its defaults set them
RUN_ONLY = {"output_dir", "logging_dir", "max_steps", "save_strategy", "save_steps", "logging_strategy",
            "logging_steps", "report_to", "disable_tqdm", "do_eval", "per_device_eval_batch_size", "eval_strategy"}
# the machine: the files are for GPUs, this test runs on the CPU
CPU = {"use_cpu": True, "bf16": False, "fp16": False}

PLANS = {
    "lora": dict(gpus="1xH100", method=Method.lora),
    "lora-one-target": dict(gpus="1xH100", method=Method.lora, lora_targets="q_proj"),
    "qlora-int8": dict(gpus="1xH100", method=Method.qlora, quant=Quant.int8),
    "qlora-ckpt-offload": dict(gpus="1xH100", method=Method.qlora, quant=Quant.nf4, grad_ckpt=GradCkpt.full,
                               activation_offload=True),
    "full-z2-ckpt": dict(gpus="8xH100", method=Method.full, zero=2, grad_ckpt=GradCkpt.full),
    "full-fsdp-bf16-true": dict(gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard,
                                precision=Precision.bf16_true, grad_ckpt=GradCkpt.selective),
}


def _plan(stage: Stage, kw: dict) -> TrainConfig:
    return build_config(model="qwen2.5-7b", stage=stage, micro_batch=8, grad_accum=2,
                        generation=Generation.transformers, check=False, **kw)


def _parse(stage: Stage, path: Path, out: Path):  # noqa: ANN202 (TRL's dataclasses and the unparsed strings)
    """What `trl grpo --config path` parses (trl/cli/commands/training.py: the YAML keys no dataclass takes go to
    `accelerate launch`), with this machine's CPU on the command line."""
    import importlib

    parser = importlib.import_module(f"trl.scripts.{stage.value}").make_parser()
    with mock.patch.dict(os.environ):
        return parser.parse_args_and_config(
            ["--config", str(path), "--output_dir", str(out), *(f"--{k}={v}" for k, v in CPU.items())],
            return_remaining_strings=True, separate_remaining_strings=True)


def _ftplan_run_args(cfg: TrainConfig, tmp_path: Path) -> tuple[dict, object]:
    """The keywords `ftplan run` builds GRPOConfig / RLOOConfig from on the GPUs (runner.stages.common.run_stage),
    and the config they make with this machine's CPU in place of the GPUs."""
    opts = RunOptions(model_path=tmp_path, data=tmp_path, output=tmp_path / "run")
    fields = training_fields(cfg, opts, on_cuda=True, has_eval=False, extra=grpo.config_fields(cfg, opts))
    with mock.patch.dict(os.environ):  # a DeepSpeed config sets accelerate's variables
        return fields, grpo.config_class(cfg)(**(fields | CPU))


@pytest.mark.parametrize("stage", [Stage.grpo, Stage.rloo])
@pytest.mark.parametrize("name", sorted(PLANS))
def test_trl_config_yaml_trains_as_ftplan_run(tmp_path: Path, stage: Stage, name: str) -> None:
    cfg = _plan(stage, PLANS[name])
    emit(cfg, tmp_path / "plan")
    path = tmp_path / "plan" / f"{stage.value}_config.yaml"
    text = path.read_text()
    _, from_yaml, _, _, config_left, _ = _parse(stage, path, tmp_path / "o")
    assert config_left == []  # every key is a field of TRL's dataclasses
    fields, run = _ftplan_run_args(cfg, tmp_path)
    raw = yaml.safe_load(text)
    assert (raw["bf16"], raw["fp16"]) == (cfg.precision is Precision.bf16_mixed, cfg.precision is Precision.fp16_mixed)
    assert (raw["bf16"], raw["fp16"]) == (fields["bf16"], fields["fp16"])
    differ = {}
    for f in dataclasses.fields(grpo.config_class(cfg)):
        if f.init and f.name not in RUN_ONLY and getattr(from_yaml, f.name) != getattr(run, f.name):
            differ[f.name] = (getattr(from_yaml, f.name), getattr(run, f.name))
    # activation offload: the Trainer's offload of the checkpointed layers, `ftplan run`'s is around the whole step
    offload = {"use_reentrant": False, "offload": True}, {"use_reentrant": False}
    expected = {} if not (cfg.activation_offload and cfg.grad_ckpt is not GradCkpt.none) else {
        "activation_checkpointing_kwargs": offload, "gradient_checkpointing_kwargs": offload}
    assert differ == expected
    assert ("activation offload" in text) == cfg.activation_offload
    if cfg.grad_ckpt is not GradCkpt.none:
        assert from_yaml.activation_checkpointing and from_yaml.gradient_checkpointing_kwargs["use_reentrant"] is False


@pytest.mark.parametrize("name", sorted(PLANS))
def test_trl_model_config_loads_the_policy_as_ftplan_run(tmp_path: Path, name: str) -> None:
    import torch
    from peft.tuners.tuners_utils import check_target_module_exists
    from trl import get_peft_config, get_quantization_config

    from runner.model import ModelOptions, attn_name, load_dtype, lora_config

    cfg = _plan(Stage.grpo, PLANS[name])
    emit(cfg, tmp_path / "plan")
    path = tmp_path / "plan" / "grpo_config.yaml"
    _, _, model_args, _, _, _ = _parse(Stage.grpo, path, tmp_path / "o")
    assert getattr(torch, model_args.dtype) == load_dtype(cfg, on_cuda=True)
    assert model_args.attn_implementation == attn_name(cfg)
    peft = get_peft_config(model_args)
    assert (peft is None) == (cfg.method is Method.full)
    if peft is not None:
        ours = lora_config(cfg, ModelOptions())
        same = ("r", "lora_alpha", "lora_dropout", "task_type", "bias", "use_rslora", "use_dora", "modules_to_save")
        assert {k: getattr(peft, k) for k in same} == {k: getattr(ours, k) for k in same}
        for key in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.mlp.up_proj",
                    "lm_head", "model.layers.0.self_attn.q_proj_x"):
            assert bool(check_target_module_exists(peft, key)) == bool(check_target_module_exists(ours, key)), key
    quant = get_quantization_config(model_args)
    assert (quant is None) == (cfg.quant is Quant.none)
    if quant is not None:
        pytest.importorskip("bitsandbytes")
        from runner.quant import bnb_config

        ours = bnb_config(cfg, on_cuda=True).to_dict()
        theirs = quant.to_dict()
        differ = {k for k in ours if ours[k] != theirs.get(k)}
        # TRL's script ties the compute dtype to `dtype`; the header says how the plan's differs
        four_bit_mixed = cfg.quant is Quant.nf4 and cfg.precision is not Precision.bf16_true
        assert differ == ({"bnb_4bit_compute_dtype"} if four_bit_mixed else set())
        assert ("computes the 4-bit matmuls" in path.read_text()) == bool(differ)


@pytest.mark.parametrize("name", ["lora", "full-z2-ckpt", "full-fsdp-bf16-true"])
def test_trl_config_header_launches_the_plans_processes(tmp_path: Path, name: str) -> None:
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    cfg = _plan(Stage.grpo, PLANS[name])
    out = tmp_path / "plan"
    emit(cfg, out)
    text = (out / "grpo_config.yaml").read_text()
    run = next(line for line in text.splitlines() if line.startswith("# run: trl grpo"))
    argv = run.removeprefix("# run: ").split(" (")[0].split()
    assert argv[argv.index("--config") + 1] == str((out / "grpo_config.yaml").resolve())
    accelerate = argv[argv.index("--accelerate_config") + 1]
    assert resolve_accelerate_config_argument(["--accelerate_config", accelerate]) == ["--config_file", accelerate]
    assert yaml.safe_load(Path(accelerate).read_text())["num_processes"] == cfg.world_size
    fields = yaml.safe_load(text)
    if "deepspeed" in fields:
        assert fields["deepspeed"] == json.loads((out / "ds_config.trainer.json").read_text())
        assert "ds_config.trainer.json" in text.split("\nper_device")[0]
        # under the environment `accelerate launch` gives a DeepSpeed script (its config file: ds_config.json), the
        # Trainer's plugin is the `deepspeed` field's, as under `ftplan run`
        env = _deepspeed_launch_env(Path(accelerate))
        assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str((out / "ds_config.json").resolve())
        with mock.patch.dict(os.environ, env):
            _, args, _, _, _, _ = _parse(Stage.grpo, out / "grpo_config.yaml", tmp_path / "o")
        plugin = args.deepspeed_plugin
        assert plugin.zero_stage == fields["deepspeed"]["zero_optimization"]["stage"]
        assert plugin.gradient_accumulation_steps == cfg.grad_accum
        assert plugin.hf_ds_config.config["train_micro_batch_size_per_gpu"] == cfg.micro_batch
    assert ("fsdp" in fields) == ("FSDP:" in text)


def _deepspeed_launch_env(accelerate_yaml: Path) -> dict[str, str]:
    """The ACCELERATE_* variables `accelerate launch --config_file accelerate_yaml` starts a DeepSpeed script with
    (accelerate/commands/launch.py launch_command -> deepspeed_launcher; accelerate/utils/launch.py
    prepare_deepspeed_cmd_env)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mp_from_config = _validate_launch_command(
        launch_command_parser().parse_args(["--config_file", str(accelerate_yaml), "train.py"]))
    args.deepspeed_fields_from_accelerate_config = ",".join(
        [*defaults.deepspeed_config] + (["mixed_precision"] if mp_from_config else []))
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}
