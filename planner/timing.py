"""Placeholder replaced by the time model (issue 3): tokens/s from 6 x params x tokens at 40% MFU."""

from __future__ import annotations

from dataclasses import dataclass

from planner.params import active_params
from planner.strategy import TrainConfig


@dataclass(frozen=True, slots=True)
class StepTime:
    step_time_s: float
    tokens_per_s: float


def step_time(cfg: TrainConfig) -> StepTime:
    flops = 6 * active_params(cfg.model) * cfg.tokens_per_step
    t = flops / (cfg.world_size * cfg.cluster.gpu.peak_bf16_flops_per_s * 0.4)
    return StepTime(step_time_s=t, tokens_per_s=cfg.tokens_per_step / t)
