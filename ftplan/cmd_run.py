"""`ftplan run` (train a plan, starting the launcher itself) and `ftplan merge` (fold a LoRA adapter in)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ftplan import options as o
from ftplan.app import app
from planner.errors import PlanError
from planner.gpus import is_cpu
from planner.options import AdapterArgs, LimitArgs, Target
from planner.strategy import Method, Stage


def _plan_on_the_fly(model: str, gpus: str, method: Method, stage: Stage, seq_len: int, out: Path,
                     rollout: dict | None = None) -> Path:
    """The best plan for `model` on `gpus` (planner.search.plan), written as plan.json into the output folder."""
    from dataclasses import replace

    from planner.build import build_config
    from planner.search import SearchSpace, plan
    from planner.strategy import Offload, Optimizer
    from runner.train import write_plan

    base = build_config(model=model, gpus=gpus, method=method, seq_len=seq_len, stage=stage, **(rollout or {}))
    # attention: the one transformers picks for the model (SearchSpace's default: sdpa, or eager for gpt-oss)
    space = SearchSpace(methods=(method,), tps=(1,), pps=(1,))
    if is_cpu(base.cluster.gpu):
        # torch's AdamW (bitsandbytes' optimizers run on the CPU too, but are the user's choice through a plan),
        # no FlashAttention-2 (it needs CUDA); TP/PP are not run by the Trainer-based runner
        space = replace(space, optimizers=(Optimizer.adamw,))
    from planner.runnable import runnable

    fitting = [est for est in plan(base, space).plans if runnable(est.config)]
    if is_cpu(base.cluster.gpu):
        # on the CPU device, "device" memory is host memory: offloading to the host only adds copies
        fitting = [est for est in fitting if est.config.offload is Offload.none]
    if not fitting:
        raise PlanError(f"no {method.value} plan for {model} fits on {gpus}")
    path = out / "plan.json"
    write_plan(fitting[0].config, path)
    return path


@app.command()
def run(
    plan: Annotated[
        Path | None, typer.Argument(help="plan.json from `ftplan plan --emit` (or give --model and --gpus).")] = None,
    model_path: Annotated[
        Path,
        typer.Option("--model-path", help="Model directory (config.json + weights) or a .gguf file."),
    ] = ...,  # type: ignore[assignment]
    data: Annotated[
        Path,
        typer.Option("--data", help="Training data: .json, .jsonl, .csv or .parquet."),
    ] = ...,  # type: ignore[assignment]
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Adapter/model, checkpoints and metrics go here."),
    ] = Path("ftplan-run"),
    max_steps: Annotated[int, typer.Option(help="Optimizer steps to train.")] = 30,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output.")] = False,
    save_steps: Annotated[int, typer.Option(help="Save a checkpoint every N steps.")] = 50,
    eval_fraction: Annotated[
        float, typer.Option(help="Share of examples held out for eval loss and perplexity.")] = 0.05,
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate (default: 1e-4 adapters, 1e-5 full).")] = None,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 0,
    data_format: Annotated[str, typer.Option("--format", help="auto, alpaca, sharegpt, text or template.")] = "auto",
    template: Annotated[
        str | None,
        typer.Option(help="Column template, e.g. 'Q: {question} A: {answer}' (sft: the last column is the answer)."),
    ] = None,
    neftune_alpha: Annotated[float | None, typer.Option(help="NEFTune noise alpha (Jain et al. 2023 use 5).")] = None,
    rope_scaling: Annotated[str | None, typer.Option(help="RoPE scaling TYPE:FACTOR, e.g. linear:2.0.")] = None,
    modules_to_save: Annotated[
        str, typer.Option(help="Comma-separated modules trained in full beside LoRA (embed_tokens,lm_head).")] = "",
    seed: Annotated[int, typer.Option(help="Random seed (data order, LoRA init, eval split).")] = 42,
    dpo_beta: Annotated[
        float, typer.Option(help="--stage dpo: beta, how far the policy may move from the reference.")] = 0.1,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Plan on the fly: model name or directory (default: --model-path)."),
    ] = None,
    gpus: Annotated[
        str | None, typer.Option("--gpus", "-g", help="Plan on the fly for these devices: 1xA800, 2xCPU.")] = None,
    method: o.flag(AdapterArgs, "method") = Method.lora,  # type: ignore[valid-type]
    stage: o.flag(Target, "stage") = Stage.sft,  # type: ignore[valid-type]
    seq_len: Annotated[int, typer.Option(help="Plan on the fly: tokens per sequence.")] = 512,
    completion_len: Annotated[int, typer.Option(help="Plan on the fly, --stage grpo / rloo: tokens per completion "
                                                     "(the prompt gets the rest of --seq-len).")] = 128,
    reward: Annotated[list[str] | None, typer.Option(help=(
        "--stage grpo / rloo: a reward (repeat): keyword:WORD, length:N, regex:PATTERN, match (the row's 'answer' "
        "column), module:function, or a reward model directory."))] = None,
    calibration: o.flag(LimitArgs, "calibration") = None,  # type: ignore[valid-type]
) -> None:
    """Train a plan with the transformers Trainer + peft, starting torchrun itself for several devices."""
    from runner.train import RunOptions, load_plan, validate_inputs

    opts = RunOptions(model_path=model_path, data=data, output=output, max_steps=max_steps, resume=resume,
                      save_steps=save_steps, eval_fraction=eval_fraction, learning_rate=learning_rate,
                      warmup_steps=warmup_steps, data_format=data_format, template=template,
                      neftune_alpha=neftune_alpha, rope_scaling=rope_scaling,
                      modules_to_save=tuple(m for m in modules_to_save.split(",") if m), seed=seed,
                      dpo_beta=dpo_beta, calibration=calibration, rewards=tuple(reward or ()))
    if plan is None and gpus is None:
        raise PlanError("give PLAN.json, or --gpus (with --model or --model-path) to plan on the fly")
    if plan is not None and gpus is not None:
        raise PlanError("give PLAN.json or --gpus, not both")
    if data_format not in ("auto", "alpaca", "sharegpt", "text", "template"):
        raise PlanError(f"--format '{data_format}': use auto, alpaca, sharegpt, text or template")
    if plan is not None:
        cfg = load_plan(plan)
        validate_inputs(cfg, opts)
    else:
        from planner.build import build_config

        rl = {"completion_len": completion_len} if stage in (Stage.grpo, Stage.rloo) else {}
        probe = build_config(model=model or str(model_path), gpus=gpus, method=method, seq_len=seq_len,
                             stage=stage, **rl)
        validate_inputs(probe, opts)  # bad data or paths: nothing written yet
        output.mkdir(parents=True, exist_ok=True)
        plan = _plan_on_the_fly(model or str(model_path), gpus, method, stage, seq_len, output, rl)
        cfg = load_plan(plan)
    from runner.launcher import launch

    status = launch(cfg, plan, opts)
    if status:
        raise SystemExit(status)
    from runner.metrics import SUMMARY_FILE

    summary_file = opts.output / SUMMARY_FILE
    if opts.report and summary_file.exists():
        from reports.run_report import print_run_summary

        print_run_summary(json.loads(summary_file.read_text()))  # its rows follow the summary's `on_cuda`


@app.command()
def merge(
    adapter: Annotated[Path, typer.Argument(help="Output directory of a LoRA `ftplan run` (adapter + tokenizer).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the merged model goes.")],
    model_path: Annotated[
        Path | None, typer.Option("--model-path", help="Base model (default: the one the run used).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --output.")] = False,
) -> None:
    """Merge a LoRA adapter into its base model (peft merge_and_unload) and save it with the tokenizer."""
    from runner.merge import merge as do_merge

    path = do_merge(adapter, output, model_path=model_path, force=force)
    typer.echo(f"merged model written to {path}")
