"""The memory switches (Liger's kernels, torch.compile) reach every emitted file as `ftplan run` applies them, each
file read back by its owner's parser: TRL's grpo_config.yaml / rloo_config.yaml through TrlParser (what `trl grpo
--config` runs) against the GRPOConfig / RLOOConfig `ftplan run` builds, accelerate.yaml through `accelerate launch`'s
own config handling into the dynamo plugin the Trainer builds, launch.sh's Trainer flags through HfArgumentParser;
what a file cannot say is in its header."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from unittest import mock

import pytest
import yaml

from planner.build import build_config
from planner.errors import PlanError
from planner.rl.settings import Generation
from planner.strategy import CrossEntropy, Engine, FsdpStrategy, Kernels, Method, Stage, TrainConfig
from runner import switches
from runner.emit import emit
from runner.run_common import RunOptions, training_arguments
from runner.stages import grpo
from runner.train import validate_inputs

SWITCH_FIELDS = ("use_liger_kernel", "liger_kernel_config", "torch_compile", "torch_compile_backend",
                 "torch_compile_mode")


def _rl(stage: Stage, **kw) -> TrainConfig:
    return build_config(model="qwen2.5-7b", gpus="1xH100", method=Method.lora, stage=stage, micro_batch=8,
                        grad_accum=2, generation=Generation.transformers, check=False, **kw)


def _trl_cli_args(cfg: TrainConfig, path: Path, out: Path):
    """The config as `trl grpo --config path` / `trl rloo --config path` parses it (trl/scripts/utils.py TrlParser:
    the YAML's keys become the parser's defaults); the file is for GPUs, so this machine's run says the CPU."""
    from trl import ModelConfig, TrlParser

    args, _ = TrlParser((grpo.config_class(cfg), ModelConfig)).parse_args_and_config(
        ["--config", str(path), "--output_dir", str(out), "--use_cpu", "True", "--bf16", "False"])
    return args


@pytest.mark.parametrize("stage", [Stage.grpo, Stage.rloo])
@pytest.mark.parametrize("switch", ["liger-compile", "liger-part", "none"])
def test_trl_config_yaml_runs_the_switches_ftplan_run_does(tmp_path: Path, stage: Stage, switch: str) -> None:
    kw = {"liger-compile": dict(kernels=Kernels.liger, torch_compile=True),
          "liger-part": dict(kernels=Kernels.liger), "none": {}}[switch]
    cfg = _rl(stage, **kw)
    emit(cfg, tmp_path / "plan")
    path = tmp_path / "plan" / f"{stage.value}_config.yaml"
    fields = yaml.safe_load(path.read_text())
    assert ("use_liger_kernel" in fields, "torch_compile" in fields) == (switch != "none", switch == "liger-compile")
    from_yaml = _trl_cli_args(cfg, path, tmp_path / "o")
    # what `ftplan run` hands TRL (runner.stages.common.run_stage), on this machine's CPU
    opts = RunOptions(model_path=tmp_path, data=tmp_path, output=tmp_path / "run")
    run = training_arguments(cfg, opts, on_cuda=False, has_eval=False, args_class=grpo.config_class(cfg),
                             extra=grpo.config_fields(cfg, opts))
    assert {f: getattr(from_yaml, f) for f in SWITCH_FIELDS} == {f: getattr(run, f) for f in SWITCH_FIELDS}
    assert from_yaml.use_liger_kernel is (switch != "none")
    assert from_yaml.torch_compile is (switch == "liger-compile")
    if switch != "none":
        assert from_yaml.liger_kernel_config == {"rope": True, "swiglu": True, "rms_norm": True,
                                                 "cross_entropy": False, "fused_linear_cross_entropy": False}
    assert "fused linear" not in path.read_text()  # TRL runs these: no refusal in the header


def test_trl_trainers_refuse_the_fused_loss_in_one_line(tmp_path: Path) -> None:
    """TRL 1.16's GRPOTrainer / RLOOTrainer raise on liger_kernel_config's fused_linear_cross_entropy (their fused LM
    head computes the log-probabilities): `ftplan run` refuses such a plan before anything starts, and the emitted
    config, which holds the plan's fields, says why in its header."""
    cfg = _rl(Stage.grpo, kernels=Kernels.liger, cross_entropy=CrossEntropy.fused)
    emit(cfg, tmp_path / "plan")
    text = (tmp_path / "plan" / "grpo_config.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("# ")]
    assert any("refuses Liger's fused linear cross-entropy" in line for line in header), header
    assert yaml.safe_load(text)["liger_kernel_config"]["fused_linear_cross_entropy"] is True
    opts = RunOptions(model_path=tmp_path / "model", data=tmp_path / "prompts.jsonl", output=tmp_path / "out")
    with pytest.raises(PlanError, match="--cross-entropy standard") as exc:
        validate_inputs(cfg, opts)
    assert "\n" not in str(exc.value)
    assert switches.trl_loss_refusal(_rl(Stage.grpo, kernels=Kernels.liger)) is None
    assert switches.trl_loss_refusal(build_config(model="qwen2.5-7b", gpus="1xH100", method=Method.lora,
                                                  cross_entropy=CrossEntropy.fused, check=False)) is None


def _dynamo_env(accelerate_yaml: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file accelerate_yaml` starts a plain or FSDP script with."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(accelerate_yaml), "train.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("compile_", [True, False])
def test_accelerate_yaml_compiles_as_the_trainer_does(tmp_path: Path, compile_: bool) -> None:
    from accelerate.utils import TorchDynamoPlugin

    cfg = build_config(model="llama-3-8b", gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard,
                       micro_batch=2, grad_accum=2, torch_compile=compile_, check=False)
    emit(cfg, tmp_path)
    env = _dynamo_env(tmp_path / "accelerate.yaml")
    with mock.patch.dict(os.environ, env):
        from_yaml = TorchDynamoPlugin().to_dict()
    # the plugin transformers' Trainer builds from torch_compile (trainer.py, _build_accelerator_args)
    opts = RunOptions(model_path=tmp_path, data=tmp_path, output=tmp_path / "run")
    args = training_arguments(build_config(model="llama-3-8b", gpus="1xCPU", method=Method.full, seq_len=64,
                                           micro_batch=1, torch_compile=compile_, check=False),
                              opts, on_cuda=False, has_eval=False)
    with mock.patch.dict(os.environ, {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_DYNAMO")},
                         clear=True):
        trainer = TorchDynamoPlugin(backend=args.torch_compile_backend, mode=args.torch_compile_mode).to_dict()
    assert from_yaml == trainer
    assert from_yaml["backend"] == ("inductor" if compile_ else "no")


def test_deepspeed_accelerate_yaml_says_what_it_cannot_compile(tmp_path: Path) -> None:
    cfg = build_config(model="llama-3-8b", gpus="8xH100", method=Method.full, zero=2, micro_batch=2, grad_accum=2,
                       torch_compile=True, check=False)
    assert cfg.engine is Engine.deepspeed
    emit(cfg, tmp_path)
    text = (tmp_path / "accelerate.yaml").read_text()
    assert "dynamo_config" not in yaml.safe_load(text)
    assert any(line.startswith("# --torch-compile") for line in text.splitlines())


@pytest.mark.parametrize("kernels, loss", [(Kernels.liger, CrossEntropy.standard),
                                           (Kernels.eager, CrossEntropy.fused),
                                           (Kernels.liger, CrossEntropy.fused)])
def test_launch_sh_and_accelerate_yaml_name_the_plans_liger_kernels(tmp_path: Path, kernels: Kernels,
                                                                     loss: CrossEntropy) -> None:
    from transformers import HfArgumentParser, TrainingArguments

    cfg = build_config(model="llama-3-8b", gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard,
                       micro_batch=2, grad_accum=2, kernels=kernels, cross_entropy=loss, torch_compile=True,
                       check=False)
    emit(cfg, tmp_path)
    launch = (tmp_path / "launch.sh").read_text()
    flags = switches.trainer_cli_flags(cfg)
    assert flags in launch
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "o"), "--use_cpu", "True", *shlex.split(flags)])
    assert args.use_liger_kernel and args.torch_compile and args.liger_kernel_config is None
    # the flag alone applies Liger's defaults: the note names the plan's part where it differs
    partial = switches.liger_kernel_config(cfg) != switches.LIGER_DEFAULTS
    assert (repr(switches.liger_kernel_config(cfg)) in launch) == partial
    assert partial == (kernels is not Kernels.liger or loss is not CrossEntropy.fused)
    header = (tmp_path / "accelerate.yaml").read_text().split("distributed_type")[0]
    assert "_apply_liger_kernel_to_instance(model=model, rope=" in header
