"""The loop the rm and dpo stages share: preference data, the stage's model and TRL trainer, the runner's
metrics callback, checkpoints and --resume, then the adapter (or model), tokenizer and run_summary.json as
the SFT path (runner.train.run) writes them.

Per step, metrics.jsonl carries the loss and TRL's reward accuracy and margin (DPO: `rewards/accuracies`,
`rewards/margins`, the implicit rewards beta * log(pi/pi_ref) of Rafailov et al. 2023, Sec. 5; RM: `accuracy`,
`margin` of the scalar scores), renamed `reward_accuracy` / `reward_margin` (runner.metrics).

With FTPLAN_TRACK_TENSORS=1 in the environment, a CPU run also counts live tensor bytes from the loaded models
to the end of training (profiler.tracker.StorageTracker, the CPU analogue of torch.cuda.max_memory_allocated;
its peak is reset once the models are loaded) and writes `measured_peak_tensor_bytes` beside the plan's
prediction: the check of the planner's stage model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any

from planner.errors import PlanError
from planner.strategy import Stage, TrainConfig

TRACK_ENV = "FTPLAN_TRACK_TENSORS"


def _stage_module(cfg: TrainConfig) -> Any:
    if cfg.stage in (Stage.grpo, Stage.rloo):
        from runner.stages import grpo

        return grpo
    if cfg.stage is Stage.dpo:
        from runner.stages import dpo

        return dpo
    if cfg.stage is Stage.rm:
        from runner.stages import rm

        return rm
    raise PlanError(f"stage '{cfg.stage.value}' is not run through TRL's trainers")


def _tracker(on_cuda: bool) -> Any:
    if on_cuda or os.environ.get(TRACK_ENV) != "1":
        return None
    from profiler.tracker import StorageTracker

    return StorageTracker()


def run_stage(cfg: TrainConfig, opts: Any) -> dict[str, Any]:
    """Train a rm / dpo / grpo / rloo plan in this process (one rank of the launcher's group); returns the summary."""
    import torch
    from transformers import PrinterCallback

    from planner.compute import model_flops_per_token, peak_flops_per_s
    from runner import metrics as mt
    from runner.model import load_tokenizer, model_source
    from runner.run_common import latest_checkpoint, on_cuda_device, start_metrics, training_arguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != cfg.world_size:
        raise PlanError(f"plan {cfg} needs {cfg.world_size} processes, this run has {world}: "
                        "start it with `ftplan run`, which launches them")
    stage = _stage_module(cfg)
    on_cuda = on_cuda_device(cfg)
    src = model_source(opts.model_path)
    tokenizer = load_tokenizer(src)
    train_set, eval_set = stage.datasets(cfg, opts, tokenizer)
    resume_from = latest_checkpoint(opts.output) if opts.resume else None
    if opts.resume and resume_from is None:
        raise PlanError(f"--resume: no checkpoint-N folder in {opts.output}")
    tracker = _tracker(on_cuda)
    with tracker if tracker is not None else contextlib.nullcontext():
        torch.manual_seed(opts.seed)
        models = stage.load_models(cfg, src, opts, on_cuda=on_cuda)
        if tracker is not None:
            # the plan describes the training step: loading holds the checkpoint's tensors (an LM head a reward
            # model drops included) beside the new model for a moment, a host-side peak on a GPU machine
            tracker.reset_peak()
        args = training_arguments(cfg, opts, on_cuda=on_cuda, has_eval=eval_set is not None,
                                  args_class=stage.config_class(cfg), extra=stage.config_fields(cfg, opts))
        is_main = args.process_index == 0
        metrics_path = start_metrics(opts.output, resume_from, is_main=is_main)
        callback = mt.make_callback(path=metrics_path, world_size=world, flops_token=model_flops_per_token(cfg),
                                    peak_flops=peak_flops_per_s(cfg.cluster.gpu, cfg.precision), on_cuda=on_cuda,
                                    is_main=is_main, max_steps=opts.max_steps,
                                    tensorboard_dir=opts.output / "runs")
        trainer = stage.make_trainer(models, args=args, tokenizer=tokenizer, train_dataset=train_set,
                                     eval_dataset=eval_set, callbacks=[callback], cfg=cfg, opts=opts)
        if len(trainer.train_dataset) == 0:
            raise PlanError(f"{opts.data}: no example fits within seq_len {cfg.seq_len}")
        trainer.remove_callback(PrinterCallback)
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_metrics = trainer.evaluate() if eval_set is not None else {}
    trainer.save_model(str(opts.output))
    summary = _summary(cfg, trainer, result, callback, eval_metrics, resume_from, world, on_cuda, tracker)
    if is_main:
        _write_outputs(cfg, opts, src, tokenizer, summary)
    return summary


def _tokens_per_s(state: Any) -> float:
    runtime = sum(h.get("train_runtime", 0.0) for h in state.log_history)
    return state.num_input_tokens_seen / runtime if runtime else 0.0


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return vals[-1] if vals else None


def _summary(cfg: TrainConfig, trainer: Any, result: Any, callback: Any, eval_metrics: dict[str, float],
             resume_from: Any, world: int, on_cuda: bool, tracker: Any) -> dict[str, Any]:
    from runner import metrics as mt
    from runner.run_common import checkpoint_step

    summary: dict[str, Any] = {
        "plan": str(cfg),
        "stage": cfg.stage.value,
        "steps": trainer.state.global_step,
        "resumed_from_step": checkpoint_step(resume_from),
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        # unpadded tokens per second over the run, from the steps metrics.jsonl logged (rank 0's view of all ranks)
        "measured_tokens_per_s": _tokens_per_s(trainer.state),
        "measured_peak_memory_bytes": mt.peak_memory_bytes(on_cuda),
        "world_size": world,
    }
    rows = [mt.reward_metrics(h) for h in trainer.state.log_history if "loss" in h]
    for key in ("reward_accuracy", "reward_margin", "reward_mean", "kl"):
        value = _last(rows, key)
        if value is not None:
            summary[f"final_{key}"] = value
    firsts = [r["reward_mean"] for r in rows if "reward_mean" in r]
    if firsts:  # online RL: the mean reward of the first and the last steps logged
        summary["first_reward_mean"] = firsts[0]
    if eval_metrics:
        summary["eval_loss"] = eval_metrics["eval_loss"]
        evals = mt.reward_metrics({k.removeprefix("eval_"): v for k, v in eval_metrics.items()})
        summary.update({f"eval_{k}": v for k, v in evals.items()})  # no perplexity: not a token cross-entropy
    if tracker is not None:
        summary["measured_peak_tensor_bytes"] = int(tracker.finish().total_bytes)
    return summary


def _write_outputs(cfg: TrainConfig, opts: Any, src: Any, tokenizer: Any, summary: dict[str, Any]) -> None:
    """run_summary.json and the run info `ftplan merge` reads (`ftplan run` prints the summary)."""
    from planner.atomic import write_text_atomic
    from runner import metrics as mt
    from runner.run_common import RUN_INFO_FILE

    tokenizer.save_pretrained(str(opts.output))
    from planner.timing import step_time
    from runner.summary import predicted_memory

    pred = predicted_memory(cfg)
    summary["predicted_peak_memory_bytes"] = pred.total_bytes
    summary["predicted_tokens_per_s"] = step_time(cfg).tokens_per_s
    # the keys of runner.summary, so that `ftplan run` prints the same memory row as for pt / sft
    summary["device"] = cfg.cluster.gpu.name
    summary["peak_tensor_bytes_predicted"] = pred.tensor_bytes
    if "measured_peak_tensor_bytes" in summary:
        summary["peak_tensor_bytes_measured"] = summary["measured_peak_tensor_bytes"]
        summary["peak_tensor_source"] = "FTPLAN_TRACK_TENSORS=1, from the loaded models on"
        summary["peak_tensor_steps"] = summary["steps"]
    summary = {k: v for k, v in summary.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    write_text_atomic(opts.output / mt.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    src_info = {"model_path": str(src.directory), "gguf_file": src.gguf_file, "method": cfg.method.value,
                "stage": cfg.stage.value}
    write_text_atomic(opts.output / RUN_INFO_FILE, json.dumps(src_info, indent=2) + "\n")
