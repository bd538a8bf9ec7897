"""The training entry: `python -m runner.train PLAN.json --model-path DIR --data FILE --output DIR`, run as is for
one device or under torchrun / the deepspeed launcher for several (`ftplan run` picks the launcher itself).

The transformers Trainer runs the plan: its micro-batch, accumulation, precision, activation checkpointing and
attention, with the plan's engine (DeepSpeed through the ds_config from `planner.configs.ds_config.build_ds_config`,
FSDP through TrainingArguments.fsdp wrapping the model's decoder layer class, or plain DDP).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from planner.compute import model_flops_per_token, peak_flops_per_s
from planner.errors import PlanError
from planner.gpus import is_cpu
from planner.strategy import (
    CrossEntropy,
    Stage,
    TrainConfig,
)
from runner import switches
from runner.run_common import (
    RUN_INFO_FILE,
    RunOptions,
    checkpoint_step,
    latest_checkpoint,
    offloading_trainer,
    on_cuda_device,
    optim_name,
    prepare_data,
    start_metrics,
    training_arguments,
    write_run_files,
)

__all__ = ["RUN_INFO_FILE", "RunOptions", "load_plan", "main", "run", "training_arguments", "validate_inputs",
           "write_plan"]

def load_plan(path: Path) -> TrainConfig:
    """plan.json as `ftplan plan --emit` / `ftplan emit` write it, validated (runner.emit.load_plan)."""
    from runner.emit import load_plan as emitted_load_plan

    return emitted_load_plan(Path(path))


def write_plan(cfg: TrainConfig, path: Path) -> None:
    """plan.json for a configuration planned on the fly (the same file `ftplan emit` writes)."""
    from planner.atomic import write_text_atomic
    from planner.estimate import estimate
    from runner.emit import plan_dict

    write_text_atomic(path, json.dumps(plan_dict(estimate(cfg)), indent=2) + "\n")


def validate_inputs(cfg: TrainConfig, opts: RunOptions) -> None:
    """Checks run before anything is written (and before a launcher starts); torch only to read a pipeline
    checkpoint's optimizer groups on --resume (runner.parallel.pipeline.check_resumable)."""
    from planner.runnable import unrunnable_reasons
    from planner.runnable_stages import TRL_STAGES
    from runner import data as d
    from runner.model import model_source, parse_rope_scaling

    reasons = unrunnable_reasons(cfg)
    if reasons:
        raise PlanError(f"plan {cfg} is not run by ftplan run: {reasons[0]}")
    if opts.max_steps < 1:
        raise PlanError(f"--max-steps must be at least 1, got {opts.max_steps}")
    if opts.rope_scaling:
        parse_rope_scaling(opts.rope_scaling)
    from planner.calibration import load_calibration

    load_calibration(opts.calibration)
    model_source(opts.model_path)
    if cfg.stage in (Stage.grpo, Stage.rloo):
        from runner.stages.prompt_data import load_prompts
        from runner.stages.rewards import parse_rewards

        parse_rewards(opts.rewards)
        load_prompts(opts.data)
    elif cfg.stage in TRL_STAGES:
        from runner.stages.preference_data import load_pairs

        load_pairs(opts.data)
    else:
        d.load_segments(opts.data, fmt=d.DataFormat(opts.data_format), template=opts.template,
                        sft=cfg.stage is not Stage.pt)
    if opts.output.exists() and not opts.output.is_dir():
        raise PlanError(f"--output {opts.output} exists and is not a directory")
    if opts.resume and latest_checkpoint(opts.output) is None:
        raise PlanError(f"--resume: no checkpoint-N folder in {opts.output}")
    if opts.resume and cfg.pp > 1:
        from runner.parallel.pipeline import check_resumable

        check_resumable(cfg, latest_checkpoint(opts.output))
    if not opts.resume and opts.output.is_dir() and any(opts.output.iterdir()):
        raise PlanError(f"--output {opts.output} is not empty: pass --resume to continue its run, "
                        "or choose another directory")
    optim_name(cfg, on_cuda=not is_cpu(cfg.cluster.gpu))
    if cfg.cross_entropy is CrossEntropy.chunked:
        raise PlanError("the Trainer has no chunked cross-entropy (torchtune's): re-plan with --cross-entropy "
                        "standard, or fused (Liger) on a CUDA GPU")
    if switches.uses_liger(cfg) and is_cpu(cfg.cluster.gpu):
        raise PlanError("Liger's kernels are Triton kernels for CUDA GPUs: re-plan with --kernels eager "
                        "--cross-entropy standard for the CPU")


class _Collator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list) -> dict:
        import torch

        from runner.data import pad_batch

        return {k: torch.tensor(v) for k, v in pad_batch(batch, self.pad_id).items()}


def run(cfg: TrainConfig, opts: RunOptions) -> dict[str, Any]:
    """Train in this process (one rank of the launcher's group); returns the summary (on every rank)."""
    from planner.runnable_stages import PPO_REFUSAL, TRL_STAGES

    if cfg.stage is Stage.ppo:
        # launch.sh's torchrun / deepspeed / accelerate lines start this module for every plan; a PPO plan is
        # verl's (its emitted script), and the Trainer path below would train it as SFT without a word
        raise PlanError(PPO_REFUSAL)
    import torch
    from transformers import PrinterCallback, Trainer

    from runner import metrics as mt
    from runner.memory_probe import MemoryProbe, gather
    from runner.model import ModelOptions, load_model, load_tokenizer, model_source
    from runner.parallel import layout

    if cfg.stage in TRL_STAGES:
        from runner.stages.common import run_stage

        return run_stage(cfg, opts)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != cfg.world_size:
        raise PlanError(f"plan {cfg} needs {cfg.world_size} processes, this run has {world}: "
                        "start it with `ftplan run`, which launches them")
    on_cuda = on_cuda_device(cfg)
    if cfg.pp > 1:
        from runner.parallel.pipeline import run_pipeline

        return run_pipeline(cfg, opts, on_cuda=on_cuda)
    src = model_source(opts.model_path)
    tokenizer = load_tokenizer(src)
    train_set, eval_set = prepare_data(cfg, opts, tokenizer)
    resume_from = latest_checkpoint(opts.output) if opts.resume else None
    if opts.resume and resume_from is None:
        raise PlanError(f"--resume: no checkpoint-N folder in {opts.output}")
    torch.manual_seed(opts.seed)
    probe = MemoryProbe(on_cuda=on_cuda, rank=int(os.environ.get("RANK", "0")))  # RSS baseline before the model
    rope = opts.rope_scaling or cfg.model.rope_scaling  # a plan made with --rope-scaling carries it
    model = load_model(cfg, src, ModelOptions(modules_to_save=opts.modules_to_save, rope_scaling=rope,
                                              on_cuda=on_cuda))
    args = training_arguments(cfg, opts, on_cuda=on_cuda, has_eval=bool(eval_set))
    is_main = args.process_index == 0
    metrics_path = start_metrics(opts.output, resume_from, is_main=is_main)
    shapes = layout.full_shapes(model)
    unsharded_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    callback = mt.make_callback(path=metrics_path, world_size=world, batch_copies=cfg.tp,
                                flops_token=model_flops_per_token(cfg),
                                peak_flops=peak_flops_per_s(cfg.cluster.gpu, cfg.precision), on_cuda=on_cuda,
                                is_main=is_main,
                                max_steps=opts.max_steps, tensorboard_dir=opts.output / "runs")
    trainer_class = offloading_trainer(Trainer, cfg)
    trainer = trainer_class(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set or None,
                      data_collator=_Collator(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=[callback, probe.callback()])
    trainer.remove_callback(PrinterCallback)  # the rich progress bar and metrics.jsonl replace its dict prints
    probe.start(model)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        probe.stop()
    ranks = gather(probe.m)  # every rank's memory and step figures, for rank 0's summary
    eval_metrics = trainer.evaluate() if eval_set else {}
    per_rank = layout.gather_rank_parameters(layout.rank_parameters(trainer.model_wrapped, shapes))
    trainer.save_model(str(opts.output))  # the adapter (peft) or the full model, gathered under ZeRO-3 / FSDP
    summary = {
        "plan": str(cfg),
        "steps": trainer.state.global_step,
        "resumed_from_step": checkpoint_step(resume_from),
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "world_size": world,
        **layout.summary_fields(per_rank, unsharded_bytes),
    }
    if eval_metrics:
        summary["eval_loss"] = eval_metrics["eval_loss"]
        summary["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))
    if is_main:
        write_run_files(cfg, ranks, summary, opts=opts, tokenizer=tokenizer, src=src, on_cuda=on_cuda)
    return summary


def parse_args(argv: list[str] | None = None) -> tuple[Path, RunOptions]:
    p = argparse.ArgumentParser(prog="python -m runner.train", description=__doc__.splitlines()[0])
    p.add_argument("plan", type=Path)
    p.add_argument("--model-path", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--output", type=Path, default=Path("ftplan-run"))
    p.add_argument("--max-steps", type=int, default=RunOptions.max_steps)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--save-steps", type=int, default=RunOptions.save_steps)
    p.add_argument("--eval-fraction", type=float, default=RunOptions.eval_fraction)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--format", dest="data_format", default="auto",
                   choices=["auto", "alpaca", "sharegpt", "text", "template"])
    p.add_argument("--template", default=None)
    p.add_argument("--neftune-alpha", type=float, default=None)
    p.add_argument("--rope-scaling", default=None)
    p.add_argument("--modules-to-save", default="")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dpo-beta", type=float, default=RunOptions.dpo_beta)
    p.add_argument("--reward", action="append", default=[])
    p.add_argument("--calibration", type=Path, default=None)
    a = p.parse_args(argv)
    return a.plan, RunOptions(
        model_path=a.model_path, data=a.data, output=a.output, max_steps=a.max_steps, resume=a.resume,
        save_steps=a.save_steps, eval_fraction=a.eval_fraction, learning_rate=a.learning_rate,
        warmup_steps=a.warmup_steps, data_format=a.data_format, template=a.template,
        neftune_alpha=a.neftune_alpha, rope_scaling=a.rope_scaling,
        modules_to_save=tuple(m for m in a.modules_to_save.split(",") if m), seed=a.seed, dpo_beta=a.dpo_beta,
        calibration=a.calibration, rewards=tuple(a.reward))


def to_argv(plan: Path, opts: RunOptions) -> list[str]:
    """The inverse of parse_args: how `ftplan run` hands its options to each launched process."""
    argv = [str(plan), "--model-path", str(opts.model_path), "--data", str(opts.data), "--output", str(opts.output),
            "--max-steps", str(opts.max_steps), "--save-steps", str(opts.save_steps),
            "--eval-fraction", str(opts.eval_fraction), "--warmup-steps", str(opts.warmup_steps),
            "--format", opts.data_format, "--seed", str(opts.seed), "--dpo-beta", str(opts.dpo_beta)]
    for flag, value in (("--learning-rate", opts.learning_rate), ("--template", opts.template),
                        ("--neftune-alpha", opts.neftune_alpha), ("--rope-scaling", opts.rope_scaling),
                        ("--calibration", opts.calibration)):
        if value is not None:
            argv += [flag, str(value)]
    if opts.modules_to_save:
        argv += ["--modules-to-save", ",".join(opts.modules_to_save)]
    for reward in opts.rewards:
        argv += ["--reward", reward]
    if opts.resume:
        argv.append("--resume")
    return argv


def main(argv: list[str] | None = None) -> None:
    plan_path, opts = parse_args(argv)
    try:
        cfg = load_plan(plan_path)
        run(cfg, opts)
    except PlanError as exc:
        print(f"ftplan: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        # tear the process group down before interpreter exit: a gloo group left to the atexit
        # destructors can abort a rank ("terminate called without an active exception": seen once in CI,
        # rare). Objects in reference cycles (the Trainer's) can keep DDP's reducer, and through it
        # the ProcessGroupGloo and its worker threads' pending work, alive past destroy_process_group; freed
        # during interpreter finalization, that work's tensors take the GIL and the rank aborts (the diagnosis
        # of pytorch/pytorch PR 179291, not merged). Collect them while the interpreter is whole.
        import gc

        import torch.distributed as dist

        gc.collect()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()


if __name__ == "__main__":
    from profiler.launcher import exit_worker

    exit_worker(main)
