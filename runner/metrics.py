"""Per-step metrics of a run (metrics JSONL, TensorBoard through the Trainer) and a rich progress bar on rank 0.
The predicted-vs-measured summary at the end is runner.summary's (measured by runner.memory_probe).

MFU is the planner's (planner.compute.mfu with planner.compute.model_flops_per_token and the plan's peak
FLOP/s, planner.compute.peak_flops_per_s), so the measured MFU is the same quantity the plan predicts.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from planner.compute import mfu

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "run_summary.json"


def peak_memory_bytes(on_cuda: bool) -> int:
    """CUDA: the allocator's peak of allocated bytes (what the memory model predicts). CPU: the process's
    peak resident set (getrusage ru_maxrss, KiB on Linux), which also counts the Python and torch runtime."""
    if on_cuda:
        import torch

        return int(torch.cuda.max_memory_allocated())
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib if sys.platform == "darwin" else kib * 1024)


# TRL's per-step preference metrics (trl/trainer/dpo_trainer.py `_compute_loss`, reward_trainer.py
# `compute_loss`): the share of pairs whose chosen answer scores above the rejected one, and the mean gap
REWARD_LOG_KEYS = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
                   "accuracy": "reward_accuracy", "margin": "reward_margin",
                   # GRPO / RLOO (trl/trainer/grpo_trainer.py `_generate_and_score_completions`): the mean reward of
                   # the step's completions, its spread, the KL to the reference and the completions' mean length
                   "reward": "reward_mean", "reward_std": "reward_std", "kl": "kl",
                   "completions/mean_length": "completion_length"}


def reward_metrics(logs: dict[str, Any]) -> dict[str, float]:
    return {ours: float(logs[theirs]) for theirs, ours in REWARD_LOG_KEYS.items() if theirs in logs}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop the rows a killed run wrote after its last checkpoint, so the curve joins up."""
    if not path.exists():
        return
    from planner.atomic import write_text_atomic

    keep = [row for row in read_metrics(path) if row.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def make_callback(*, path: Path, world_size: int, flops_token: float, peak_flops: float,
                  on_cuda: bool, is_main: bool, max_steps: int, tensorboard_dir: Path | None = None,
                  batch_copies: int = 1) -> Any:
    """A transformers TrainerCallback writing one JSONL row (and TensorBoard scalars) per optimizer step and
    drawing the progress bar. `batch_copies` ranks see each batch (the TP degree: every rank of a tensor-parallel
    group gets the same batch), so the Trainer's token count over all ranks is divided by it. TensorBoard events
    are written by the writer's background thread, flushed every 30 s and at the end, rather than flushed at every
    step as transformers' TensorBoardCallback does."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.t_last = 0.0
            self.tokens_seen = 0
            self.pending: dict[str, float] = {}
            self.progress: Any = None
            self.tb: Any = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t_last = time.perf_counter()
            self.tokens_seen = state.num_input_tokens_seen
            if is_main and tensorboard_dir is not None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(tensorboard_dir), flush_secs=30)
            if is_main:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )

                self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                                         TextColumn("ETA"), TimeRemainingColumn(), transient=False,
                                         auto_refresh=False)  # redrawn once per step, no refresh thread
                self.progress.start()
                self.task = self.progress.add_task("train", total=state.max_steps or max_steps,
                                                   completed=state.global_step, loss="-")

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            now = time.perf_counter()
            dt, self.t_last = now - self.t_last, now
            # the Trainer's count of unpadded tokens over all ranks (include_num_input_tokens_seen="non_padding")
            tokens = (state.num_input_tokens_seen - self.tokens_seen) // batch_copies
            self.tokens_seen = state.num_input_tokens_seen
            tps = tokens / dt if dt > 0 else 0.0
            self.pending = {"step": state.global_step, "step_time_s": dt, "tokens": tokens, "tokens_per_s": tps,
                            "mfu": mfu(tps, flops_token, world_size, peak_flops),
                            "peak_memory_bytes": peak_memory_bytes(on_cuda)}

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            if "loss" not in logs or not self.pending:
                return
            row = {**self.pending, "loss": float(logs["loss"]), "lr": float(logs.get("learning_rate", 0.0))}
            if "grad_norm" in logs:
                row["grad_norm"] = float(logs["grad_norm"])
            row.update(reward_metrics(logs))
            self.pending = {}
            if is_main:
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if self.tb is not None:
                    for key in ("loss", "lr", "tokens_per_s", "mfu", "peak_memory_bytes", "grad_norm",
                                "reward_accuracy", "reward_margin", "reward_mean", "kl"):
                        if key in row:
                            self.tb.add_scalar(f"train/{key}", row[key], row["step"])
                if self.progress is not None:
                    self.progress.update(self.task, completed=state.global_step, loss=f"{row['loss']:.4f}",
                                         refresh=True)

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.tb is not None:
                self.tb.close()
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step, refresh=True)
                self.progress.stop()

    return MetricsCallback()
