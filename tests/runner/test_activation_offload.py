"""--activation-offload where `ftplan run` and the emitted files apply it. `ftplan run` wraps each training step in
torch.autograd.graph.save_on_cpu (runner.run_common.offloading_trainer), for the Trainer path and TRL's stage trainers
alike; launch.sh's Trainer-script line carries activation checkpointing as `ftplan run` sets it and the offload as the
Trainer's own `offload` of the checkpointed layers (transformers trainer.py pops it from
activation_checkpointing_kwargs and hands it to activation_checkpointing_enable), read back by HfArgumentParser; what
differs from `ftplan run`, or what the Trainer has no flag for, is a comment naming the switch."""

from __future__ import annotations

import shlex
from pathlib import Path
from unittest import mock

import pytest

from planner.build import build_config
from planner.rl.settings import Generation
from planner.strategy import FsdpStrategy, GradCkpt, Method, Stage, TrainConfig
from runner import launch
from runner.emit import emit
from runner.run_common import RunOptions, training_fields


def _fsdp(grad_ckpt: GradCkpt, offload: bool) -> TrainConfig:
    return build_config(model="llama-3-8b", gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard,
                        micro_batch=2, grad_accum=2, grad_ckpt=grad_ckpt, activation_offload=offload, check=False)


@pytest.mark.parametrize("grad_ckpt, offload", [(GradCkpt.full, True), (GradCkpt.none, True), (GradCkpt.full, False),
                                                (GradCkpt.none, False)])
def test_launch_sh_trainer_line_offloads_as_the_plan_says(tmp_path: Path, grad_ckpt: GradCkpt,
                                                          offload: bool) -> None:
    from transformers import HfArgumentParser, TrainingArguments

    cfg = _fsdp(grad_ckpt, offload)
    emit(cfg, tmp_path / "plan")
    text = (tmp_path / "plan" / "launch.sh").read_text()
    flags = launch.trainer_cli_flags(cfg)
    own = next(line for line in text.splitlines() if "# your DDP/FSDP script" in line)
    assert flags in own
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "o"), "--use_cpu", "True", *shlex.split(flags)])
    opts = RunOptions(model_path=tmp_path, data=tmp_path, output=tmp_path / "run")
    run = training_fields(cfg, opts, on_cuda=True, has_eval=False)
    assert args.activation_checkpointing is run["activation_checkpointing"] is (grad_ckpt is not GradCkpt.none)
    kwargs = dict(args.activation_checkpointing_kwargs or {})
    # the Trainer takes `offload` out before the rest reaches torch.utils.checkpoint (trainer.py)
    assert kwargs.pop("offload", False) is (offload and grad_ckpt is not GradCkpt.none)
    assert (kwargs or None) == run["activation_checkpointing_kwargs"]
    notes = [line for line in text.splitlines() if line.startswith("# activation offload:")]
    assert len(notes) == offload
    if offload:
        assert "save_on_cpu" in notes[0]
        assert ("no Trainer field says it" in notes[0]) == (grad_ckpt is GradCkpt.none)


@pytest.mark.parametrize("stage", [Stage.grpo, Stage.dpo, Stage.rm])
@pytest.mark.parametrize("offload", [True, False])
def test_trl_stage_trainers_offload_as_the_trainer_path(tmp_path: Path, stage: Stage, offload: bool) -> None:
    """runner.stages.common.run_stage builds the stage's trainer with make_trainer, which takes the trainer class
    through offloading_trainer as runner.train.run does."""
    import importlib

    from runner import run_common
    from runner.stages.models import StageModels

    rl = {"generation": Generation.transformers} if stage is Stage.grpo else {}
    cfg = build_config(model="qwen2.5-7b", gpus="1xH100", method=Method.lora, stage=stage, micro_batch=8,
                       grad_accum=2, grad_ckpt=GradCkpt.full, activation_offload=offload, check=False, **rl)
    module = importlib.import_module(f"runner.stages.{'grpo' if stage is Stage.grpo else stage.value}")
    seen = []

    def spy(base: type, plan: TrainConfig) -> type:
        seen.append((base.__name__, plan))
        return lambda **kw: kw

    opts = RunOptions(model_path=tmp_path, data=tmp_path, output=tmp_path / "run", rewards=("length:4",))
    with mock.patch.object(run_common, "offloading_trainer", spy):
        module.make_trainer(StageModels(model=None, peft_config=None), args=None, tokenizer=None, train_dataset=None,
                            eval_dataset=None, callbacks=[], cfg=cfg, opts=opts)
    name = {Stage.grpo: "GRPOTrainer", Stage.dpo: "DPOTrainer", Stage.rm: "RewardTrainer"}[stage]
    assert seen == [(name, cfg)]
    wrapped = run_common.offloading_trainer(object, cfg)
    assert (wrapped is object) is not offload
