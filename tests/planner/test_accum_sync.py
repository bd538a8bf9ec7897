"""Gradient accumulation under the HF Trainer's no_sync (planner.engines.ddp / fsdp `reductions_per_step`,
fsdp `gathering_micro_batches`): DDP and FSDP reduce on the last micro-batch of a step only, unless the loop syncs
every micro-batch (--sync-each-batch, verl's PPO); FSDP1's SHARD_GRAD_OP keeps its parameters gathered between
unsynced micro-batches; DeepSpeed ZeRO handles accumulation itself. Measured on 2 CPU ranks:
benchmarks/accum_sync.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner import engines
from planner import parallel_comm as pc
from planner.build import build_config
from planner.engines import ddp, fsdp, zero
from planner.states import param_counts
from planner.strategy import FsdpStrategy, Method, Precision, Stage, TrainConfig
from planner.timing import step_time


def _cfg(gpus: str = "8xA800", *, ga: int = 4, **kw) -> TrainConfig:
    return build_config(model="7b", gpus=gpus, method=Method.full, precision=Precision.bf16_mixed, micro_batch=1,
                        grad_accum=ga, seq_len=1024, check=False, **kw)


def _dp_comm(cfg: TrainConfig) -> tuple[float, float, float]:
    counts = param_counts(cfg.model, cfg.adapter, cfg.stage)
    g = pc.dp_group(cfg.cluster, cfg.tp, cfg.pp, cfg.dp, 1.0)
    return engines.of(cfg).dp_comm(cfg, g, counts.trainable, 2.0 * counts.total, 0.5, 1.0, 1.0)


@pytest.mark.parametrize("engine", [ddp, fsdp])
def test_one_reduction_per_step_under_no_sync(engine) -> None:
    kw = {"fsdp": FsdpStrategy.full_shard} if engine is fsdp else {}
    assert engine.reductions_per_step(_cfg(ga=4, **kw)) == 1
    assert engine.reductions_per_step(_cfg(ga=4, sync_each_batch=True, **kw)) == 4
    assert engine.reductions_per_step(_cfg(ga=1, sync_each_batch=True, **kw)) == 1
    assert engine.reductions_per_step(replace(_cfg(ga=4, **kw), stage=Stage.ppo)) == 4
    assert engine.gradient_offloads_per_step(_cfg(ga=4, **kw)) == 1


def test_memory_and_time_agree_on_the_sync() -> None:
    """FSDP accumulates unsharded gradients (its memory) exactly where it reduces once per step (its time)."""
    for each in (False, True):
        for ga in (1, 4):
            cfg = _cfg(ga=ga, sync_each_batch=each, fsdp=FsdpStrategy.full_shard)
            assert fsdp.accumulates_unsharded_grads(cfg) == (fsdp.reductions_per_step(cfg) < cfg.grad_accum)


@pytest.mark.parametrize(("version", "strategy", "each", "expected"), [
    (1, FsdpStrategy.shard_grad_op, False, 1),  # kept unsharded between unsynced micro-batches
    (1, FsdpStrategy.shard_grad_op, True, 4),
    (1, FsdpStrategy.full_shard, False, 4),
    (2, FsdpStrategy.shard_grad_op, False, 4),  # FSDP2 reshards after every backward
    (2, FsdpStrategy.full_shard, False, 4),
])
def test_gathering_micro_batches(version: int, strategy: FsdpStrategy, each: bool, expected: int) -> None:
    cfg = _cfg(fsdp=strategy, fsdp_version=version, sync_each_batch=each)
    assert fsdp.gathering_micro_batches(cfg) == expected


def test_ddp_all_reduces_once_per_step_or_every_micro_batch() -> None:
    once, each = _dp_comm(_cfg(gpus="2x8xA800")), _dp_comm(_cfg(gpus="2x8xA800", sync_each_batch=True))
    assert once[0] > 0
    assert each[0] == pytest.approx(4 * once[0])
    assert each[1] == pytest.approx(4 * once[1])


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("gpus", ["8xA800", "2xCPU"])
def test_fsdp_reduce_side_runs_in_the_reducing_micro_batches(version: int, gpus: str) -> None:
    """Syncing every micro-batch adds (ga - 1) micro-batches' reduce-scatters and the copies around them; the gathers
    and their copies run in every micro-batch either way."""
    kw = {"fsdp": FsdpStrategy.full_shard, "fsdp_version": version}
    once, each = _cfg(gpus, **kw), _cfg(gpus, sync_each_batch=True, **kw)
    counts = param_counts(once.model, once.adapter, once.stage)
    g = pc.dp_group(once.cluster, 1, 1, once.dp, 1.0)
    passes = fsdp.pass_seconds(once, g, counts.trainable, 2.0 * counts.total)
    grad_bytes = 2.0 * counts.trainable
    copies = sum(fsdp.reduce_copy_passes_s(once, grad_bytes, once.dp))
    sync = 0.0 if once.cluster.gpu.overlaps_comm else passes.reduce_scatter_calls * once.cluster.gpu.sync_call_s
    assert _dp_comm(each)[0] - _dp_comm(once)[0] == pytest.approx(3 * (passes.reduce_scatters_s + copies + sync))


def test_hybrid_shard_all_reduces_once_per_step() -> None:
    kw = {"fsdp": FsdpStrategy.hybrid_shard}
    once, each = _cfg("2x8xA800", **kw), _cfg("2x8xA800", sync_each_batch=True, **kw)
    counts = param_counts(once.model, once.adapter, once.stage)
    g = pc.dp_group(once.cluster, 1, 1, once.dp, 1.0)
    intra = pc.intra_node_group(once.cluster, g.per_node, 1.0)
    passes = fsdp.pass_seconds(once, intra, counts.trainable, 2.0 * counts.total)
    copies = sum(fsdp.reduce_copy_passes_s(once, 2.0 * counts.trainable, g.per_node))
    extra = _dp_comm(each)[0] - _dp_comm(once)[0]
    assert extra > 3 * (passes.reduce_scatters_s + copies)  # and the all-reduces across nodes


def test_one_micro_batch_is_unchanged_by_the_switch() -> None:
    for kw in ({}, {"fsdp": FsdpStrategy.full_shard}, {"fsdp": FsdpStrategy.shard_grad_op, "fsdp_version": 1}):
        assert step_time(_cfg(ga=1, **kw)).step_time_s == step_time(_cfg(ga=1, sync_each_batch=True, **kw)).step_time_s


@pytest.mark.parametrize("kw", [{}, {"fsdp": FsdpStrategy.full_shard}, {"fsdp": FsdpStrategy.hybrid_shard},
                                {"fsdp": FsdpStrategy.full_shard, "offload": "all"}])
def test_syncing_every_micro_batch_costs_time(kw: dict) -> None:
    once, each = step_time(_cfg("2x8xA800", **kw)), step_time(_cfg("2x8xA800", sync_each_batch=True, **kw))
    assert each.dp_comm_total_s > once.dp_comm_total_s
    assert each.step_time_s >= once.step_time_s


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_is_not_under_no_sync(stage: int) -> None:
    """The Trainer leaves accumulation to DeepSpeed's engine: --sync-each-batch changes nothing there."""
    once, each = _cfg("2x8xA800", zero=stage), _cfg("2x8xA800", zero=stage, sync_each_batch=True)
    assert step_time(once) == step_time(each)
    assert zero.gradient_offloads_per_step(once) == zero.gradient_offloads_per_step(each)
