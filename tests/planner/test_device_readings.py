"""The memory outside the tensors: NCCL's communicator buffers (planner.nccl_memory) against a published measurement,
and the caching allocator's reserve (planner.allocator) as its published sources give it."""

from __future__ import annotations

import dataclasses

import pytest

from planner import allocator, nccl_memory
from planner.build import build_config
from planner.gpus import GPUS
from planner.memory import memory_per_gpu
from planner.strategy import FsdpStrategy, GradCkpt, Method, Offload

MB = 1e6


def test_nccl_per_connection_buffers_are_ncclss_defaults() -> None:
    """LL 512 KiB + LL128 4,800 KiB + Simple 4 MiB = 9.19 MiB per connection (NCCL's defaults; the DGX Spark
    measurement of NCCL's allocations reads ~9.19 MiB each)."""
    assert pytest.approx(9.1875) == nccl_memory.CONNECTION_BYTES / 2**20


def test_nccl_communicator_on_4_a100s_as_measured() -> None:
    """NVIDIA/nccl issue 964: 4 A100s over NVLink, one process group per rank subset, a 4 MB all-reduce each:
    688 MB for groups of 3-4 GPUs, 544 MB for 2."""
    a100 = GPUS["A100-80G"]
    big = nccl_memory.communicator_bytes(a100, ranks=4, ranks_per_node=4)
    pair = nccl_memory.communicator_bytes(a100, ranks=2, ranks_per_node=2)
    print(f"[nccl] 4 ranks: {big / MB:.0f} MB (measured 688), 2 ranks: {pair / MB:.0f} MB (measured 544)")
    assert big == pytest.approx(688 * MB, rel=0.05)
    assert pair == pytest.approx(544 * MB, rel=0.20)


def test_nvls_on_8_h100s_adds_its_256_mib() -> None:
    """NVIDIA/nccl issue 1453's log: nvlsTotalSize 268435456 for 8 H100s."""
    h100, h800 = GPUS["H100"], GPUS["H800"]
    nvls = nccl_memory.communicator_bytes(h100, 8, 8) - nccl_memory.communicator_bytes(h800, 8, 8)
    assert nvls == 268435456


def test_communicators_by_engine() -> None:
    """DDP and FSDP talk on the default group; DeepSpeed clones the world group for ZeRO; FSDP's hybrid sharding
    adds a shard and a replicate group; one GPU needs none."""
    ddp = build_config(model="7b", gpus="8xA800", check=False)
    z3 = build_config(model="7b", gpus="8xA800", zero=3, check=False)
    hybrid = build_config(model="7b", gpus="2x8xA800", fsdp=FsdpStrategy.hybrid_shard, check=False)
    assert nccl_memory.communicators(ddp) == [(8, 8)]
    assert nccl_memory.communicators(z3) == [(8, 8), (8, 8)]
    assert nccl_memory.communicators(hybrid) == [(16, 8), (8, 8), (2, 1)]
    assert nccl_memory.nccl_bytes(build_config(model="7b", gpus="1xA800", check=False)) == 0


@pytest.mark.parametrize(("kw", "ratio"), [
    (dict(zero=3), 0.96),
    (dict(zero=3, grad_ckpt=GradCkpt.full, method=Method.full), 0.84),
    (dict(zero=3, grad_ckpt=GradCkpt.full), 0.76),
    (dict(zero=3, grad_ckpt=GradCkpt.full, method=Method.full, offload=Offload.optimizer), 0.73),
    (dict(zero=3, grad_ckpt=GradCkpt.full, offload=Offload.optimizer), 0.715),
    (dict(fsdp=FsdpStrategy.full_shard, grad_ckpt=GradCkpt.full), 0.69),
    (dict(grad_ckpt=GradCkpt.full), 0.86),
], ids=["zero3-N", "zero3-R", "zero3-LR", "zero3-RO", "zero3-LRO", "fsdp-LR", "ddp-LR"])
def test_allocator_utilization_is_gmlakes(kw: dict, ratio: float) -> None:
    """GMLake's measured utilization (peak active / peak reserved) for the plan's engine and techniques."""
    cfg = build_config(model="7b", gpus="8xA800", **kw, check=False)
    assert allocator.utilization(cfg).ratio == ratio


def test_reserve_is_the_transient_share_and_capped_by_the_card() -> None:
    cfg = build_config(model="7b", gpus="8xA800", grad_ckpt=GradCkpt.full, micro_batch=4, check=False)
    mem = memory_per_gpu(cfg)
    assert mem.allocated < mem.reserved < mem.device
    assert mem.other_items["allocator reserve"] == pytest.approx(mem.reserve_wanted)
    # on a card just above the tensors, the cache stops at the card
    outside = mem.other_items["CUDA context and workspaces"] + mem.other_items["NCCL communicator buffers"]
    small = dataclasses.replace(cfg.cluster.gpu, hbm_bytes=int(mem.allocated + outside + mem.reserve_wanted / 2))
    capped = memory_per_gpu(dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, gpu=small)))
    assert capped.device == pytest.approx(small.hbm_bytes)
    assert capped.other_items["allocator reserve"] < capped.reserve_wanted
    # the fit keeps half of the reserve the allocator wants (planner.allocator.RETAINED_RESERVE_FRACTION)
    assert capped.fit_bytes == pytest.approx(capped.allocated + capped.other_items["CUDA context and workspaces"]
                                             + capped.other_items["NCCL communicator buffers"]
                                             + 0.5 * capped.reserve_wanted)


def test_no_reserve_context_or_nccl_on_the_cpu() -> None:
    mem = memory_per_gpu(build_config(model="7b", gpus="2xCPU", fsdp=FsdpStrategy.full_shard, check=False))
    assert mem.allocated == mem.reserved == mem.device == mem.fit_bytes
