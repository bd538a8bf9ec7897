"""`profile run` on two CPU processes (torchrun, gloo) under DDP, ZeRO-2, ZeRO-3 and FSDP: every rank reports,
and the most loaded rank's peak is near the planner's (loose here: a 2-layer, 64-wide model is all
overheads; benchmarks/accuracy.py measures the 134M model against the 15% target).

Two launches, not four (each torchrun pays the start-up of torch, transformers and DeepSpeed on both ranks): DDP
through `launch` (one configuration, as `ftplan profile run` starts it), ZeRO-2, ZeRO-3 and FSDP one after the
other in one torchrun through `launch_many` (profiler.worker.run_many). Each configuration's tensor peak is its own:
the worker opens a fresh StorageTracker before it builds the model, which counts only storages allocated inside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.build import build_config
from planner.memory import memory_per_gpu
from planner.strategy import FsdpStrategy, Method, Precision, TrainConfig
from profiler.launch import RunResult, launch, launch_many

# ZeRO-2 with accumulation: DeepSpeed marks its own boundary (its no_sync refuses ZeRO-2/3)
ENGINES = {"ddp": {}, "zero2": {"zero": 2, "grad_accum": 2}, "zero3": {"zero": 3},
           "fsdp": {"fsdp": FsdpStrategy.full_shard}}
SINGLE = "ddp"  # through `launch`; the others share one `launch_many`


def _config(tiny_model: Path, engine: str) -> TrainConfig:
    return build_config(model=str(tiny_model), gpus="2xCPU", method=Method.full, precision=Precision.fp32,
                        seq_len=64, **ENGINES[engine])


@pytest.fixture(scope="module")
def results(tiny_model: Path) -> dict[str, RunResult]:
    found = {SINGLE: launch(_config(tiny_model, SINGLE), warmup_steps=1, steps=1, timeout_s=300)}
    many = [e for e in ENGINES if e != SINGLE]
    runs = launch_many([_config(tiny_model, e) for e in many], warmup_steps=1, steps=1, timeout_s=600,
                       track_memory=True)
    return found | dict(zip(many, runs, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES), ids=list(ENGINES))
def test_two_cpu_processes(results: dict[str, RunResult], engine: str) -> None:
    result = results[engine]
    cfg = result.config
    assert sorted(r["rank"] for r in result.ranks) == [0, 1]
    for r in result.ranks:
        assert r["config_name"] == str(cfg)  # this configuration's own run
        assert r["world_size"] == 2 and r["step_time_s"] > 0 and r["tokens_per_s"] > 0
        assert r["peak_allocated_bytes"] > 0 and r["peak_rss_bytes"] > r["peak_allocated_bytes"]
    assert memory_per_gpu(cfg).total == pytest.approx(result.peak_bytes, rel=0.35)
