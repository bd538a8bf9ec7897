"""The Trainer arguments the runner writes, read back by their owners. ftplan's `sgd` is SGD with momentum (its one
buffer per parameter is what the planner counts: planner.states.optimizer_state_bytes_per_param). The Trainer's
`optim="sgd"` reads momentum only from `optim_args` (transformers trainer_optimizer.py `_get_sgd`), so `ftplan run`,
grpo_config.yaml / rloo_config.yaml, llamafactory.yaml and the pipeline runner set it, each read back by its owner's
parser into the optimizer the Trainer builds. The checkpointing arguments take transformers 5.25's names."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
import yaml

from planner.build import build_config
from planner.configs.ds_config import DEFAULT_HYPER
from planner.rl.settings import Generation
from planner.strategy import Method, Optimizer, Stage
from runner.emit import emit
from runner.run_common import RunOptions, optim_args, training_arguments
from runner.stages import grpo


def _optimizer_kwargs(args: transformers.TrainingArguments) -> tuple[type, dict]:
    return transformers.Trainer.get_optimizer_cls_and_kwargs(args)


def test_ftplan_runs_trainer_sgd_with_the_planned_momentum(tmp_path: Path) -> None:
    import torch

    cfg = build_config(model="qwen3-0.6b", gpus="1xCPU", method=Method.full, optimizer=Optimizer.sgd, check=False)
    opts = RunOptions(model_path=tmp_path, data=tmp_path, output=tmp_path / "run")
    args = training_arguments(cfg, opts, on_cuda=False, has_eval=False)
    cls, kwargs = _optimizer_kwargs(args)
    assert cls is torch.optim.SGD and kwargs["momentum"] == DEFAULT_HYPER.sgd_momentum
    adamw = build_config(model="qwen3-0.6b", gpus="1xCPU", method=Method.full, check=False)
    assert optim_args(adamw) is None


@pytest.mark.parametrize("stage", [Stage.grpo, Stage.rloo])
def test_trl_config_yaml_carries_sgds_momentum(tmp_path: Path, stage: Stage) -> None:
    from trl import ModelConfig, TrlParser

    cfg = build_config(model="qwen2.5-7b", gpus="1xH100", method=Method.lora, stage=stage, micro_batch=8,
                       grad_accum=2, generation=Generation.transformers, optimizer=Optimizer.sgd, check=False)
    emit(cfg, tmp_path / "plan")
    path = tmp_path / "plan" / f"{stage.value}_config.yaml"
    args, _ = TrlParser((grpo.config_class(cfg), ModelConfig)).parse_args_and_config(
        ["--config", str(path), "--output_dir", str(tmp_path / "o"), "--use_cpu", "True", "--bf16", "False"])
    _, kwargs = _optimizer_kwargs(args)
    assert kwargs["momentum"] == DEFAULT_HYPER.sgd_momentum


def test_llamafactory_yaml_carries_sgds_momentum(tmp_path: Path) -> None:
    cfg = build_config(model="7b", gpus="8xA800", method=Method.full, zero=2, optimizer=Optimizer.sgd, check=False)
    emit(cfg, tmp_path / "plan")
    fields = yaml.safe_load((tmp_path / "plan" / "llamafactory.yaml").read_text())
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, optim=fields["optim"],
                                          optim_args=fields["optim_args"])
    _, kwargs = _optimizer_kwargs(args)
    assert kwargs["momentum"] == DEFAULT_HYPER.sgd_momentum


def test_checkpointing_arguments_use_transformers_current_names(tmp_path: Path) -> None:
    """transformers 5.25 deprecates `gradient_checkpointing*` for `activation_checkpointing*` (training_args.py
    __post_init__ warns a FutureWarning); the runner passes the new names, which the old ones mirror."""
    import warnings

    from planner.strategy import GradCkpt

    cfg = build_config(model="qwen3-0.6b", gpus="1xCPU", grad_ckpt=GradCkpt.full, check=False)
    opts = RunOptions(model_path=tmp_path, data=tmp_path, output=tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = training_arguments(cfg, opts, on_cuda=False, has_eval=False)
    assert args.activation_checkpointing and args.gradient_checkpointing
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
