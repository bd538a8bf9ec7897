"""Two time terms read from the engines' source.

How DeepSpeed reduces gradients (planner/engines/zero.py dp_comm):

- ZeRO-1/2: one all-reduce per reduce bucket (`use_multi_rank_bucket_allreduce`, True by default since DeepSpeed
  0.12.4: stage_1_and_2.py average_tensor -> allreduce_and_scatter -> allreduce_bucket -> dist.all_reduce), beside
  DeepSpeed's own passes over the bucket (copy in, divide, flatten, copy back: zero12_bucket_passes_s).
- overlap_comm off: ZeRO-1/2 reduce on the compute stream (average_tensor) and ZeRO-3 on the default stream
  (stage3.py reduce_and_partition_stream), so their reductions add to the step; ZeRO-3's gathers still overlap.

What full checkpointing recomputes (planner/timing.py): the layer's whole forward, peft's LoRA branch included.
"""

from __future__ import annotations

import pytest

from planner import deepspeed_sizes as ds
from planner import parallel_comm as pc
from planner.build import build_config
from planner.comm import DEFAULT_COMM_EFFICIENCY, allreduce_time_s, split_time_s
from planner.engines import zero
from planner.states import param_counts
from planner.strategy import GradCkpt, Method
from planner.timing import step_time


def _cfg(z: int, **kw):
    return build_config(model="llama-2-7b", gpus="8xA800", method=Method.full, zero=z, micro_batch=1, seq_len=2048,
                        grad_ckpt=GradCkpt.full, check=False, **kw)


def test_zero2_reduces_each_bucket_with_one_all_reduce() -> None:
    cfg = _cfg(2, grad_accum=1)
    g = pc.dp_group(cfg.cluster, 1, 1, cfg.dp, DEFAULT_COMM_EFFICIENCY)
    trainable = 6.74e9  # what the total is checked against: the reduction is the all-reduce of these bytes
    total, _, _ = zero.dp_comm(cfg, g, trainable, 2 * trainable, 1.0, 2.0, DEFAULT_COMM_EFFICIENCY)
    calls = zero.reduce_calls(cfg, cfg.model.num_layers)
    all_reduce = split_time_s(allreduce_time_s, 2 * trainable, calls, g)
    passes = sum(zero.zero12_bucket_passes_s(cfg, trainable))  # DeepSpeed's copies on the reduction path
    # the rest of the total is the all-gather of the updated 16-bit partitions, which moves half an all-reduce's bytes
    assert all_reduce < total - passes < 1.6 * all_reduce


def test_zero2_moves_an_all_reduce_per_micro_batch() -> None:
    """Per step of 4 micro-batches ZeRO-2 moves 4 all-reduces of the gradients (2 units of a reduce-scatter's
    bytes each) and one all-gather of the updated partitions: 9 units; ZeRO-3 moves 3 gathers (checkpointing
    regathers) and a reduce-scatter per micro-batch: 16. A reduce per destination rank instead would be 5."""
    cfg2 = _cfg(2, grad_accum=4)
    trainable = param_counts(cfg2.model, cfg2.adapter, cfg2.stage).trainable
    passes = 4 * sum(zero.zero12_bucket_passes_s(cfg2, trainable))
    z2 = step_time(cfg2).dp_comm_total_s - passes  # the communication, without DeepSpeed's bucket copies
    z3 = step_time(_cfg(3, grad_accum=4)).dp_comm_total_s
    assert z2 / z3 == pytest.approx(9 / 16, rel=0.15)


@pytest.mark.parametrize("z", [2, 3])
def test_reductions_without_overlap_comm_add_to_the_step(z: int) -> None:
    cfg = _cfg(z, grad_accum=4)
    overlapped = step_time(cfg)
    with ds.configured(overlap_comm=False):
        serial = step_time(cfg)
    assert serial.dp_comm_total_s == pytest.approx(overlapped.dp_comm_total_s)
    assert serial.breakdown_s["dp_comm"] > overlapped.breakdown_s["dp_comm"]
    if z == 2:  # nothing of ZeRO-2's reductions hides without overlap_comm
        assert serial.breakdown_s["dp_comm"] == pytest.approx(serial.dp_comm_total_s)
    else:  # ZeRO-3's gathers keep their own stream: part of the traffic still hides
        assert serial.breakdown_s["dp_comm"] < serial.dp_comm_total_s


def _branch_s(cfg, dropout: bool, forward_only: bool) -> float:
    from planner import kernels as kn

    m = cfg.model
    return m.num_layers * kn.lora_elementwise_bytes(m, cfg.seq_len, cfg.lora_targets, 1, 2.0, dropout=dropout,
                                                    fp32_adapters=True, forward_only=forward_only) / \
        cfg.cluster.gpu.elementwise_bytes_per_s


def test_checkpointing_recomputes_the_lora_branch() -> None:
    """A checkpointed layer reruns its whole forward in backward (torch/utils/checkpoint.py), peft's LoRA branch
    (casts, dropout, scaling, add) included: the recompute holds the branch's forward share on top of the layer's
    recomputed GEMMs, attention and elementwise ops. Compared with and without LoRA dropout, so only the dropout's
    traffic differs: its forward pass (read, write, 1-byte mask) runs twice, its backward once."""
    kw = dict(model="llama-2-7b", gpus="1xA100-80G", method=Method.lora, lora_r=64, micro_batch=1, grad_accum=1,
              seq_len=4096, grad_ckpt=GradCkpt.full, check=False)
    drop, plain = build_config(lora_dropout=0.05, **kw), build_config(lora_dropout=0.0, **kw)
    recompute_s = _branch_s(drop, True, True) - _branch_s(drop, False, True)
    once_s = _branch_s(drop, True, False) - _branch_s(drop, False, False)
    a, b = step_time(drop), step_time(plain)
    assert a.breakdown_s["recompute"] - b.breakdown_s["recompute"] == pytest.approx(recompute_s, rel=1e-6)
    assert a.step_time_s - b.step_time_s == pytest.approx(recompute_s + once_s, rel=1e-6)
    assert 0 < recompute_s < once_s
