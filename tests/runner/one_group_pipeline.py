"""`python -m runner.train` as ftplan ran a pipeline plan before the Trainer's two parameter groups (commit 2192209):
each stage's AdamW over all its trained parameters in one group. Its checkpoints are the ones users hold from then;
test_pipeline_resume starts this under torchrun to write one."""

from __future__ import annotations

from typing import Any

from planner.configs.ds_config import DEFAULT_HYPER as hp
from planner.strategy import TrainConfig
from runner.parallel import pipeline


def one_group(cfg: TrainConfig, module: Any, lr: float) -> Any:
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay)


if __name__ == "__main__":
    from profiler.launcher import exit_worker
    from runner.train import main

    pipeline.pipeline_optimizer = one_group  # build_engine looks the name up when it runs
    exit_worker(main)
