"""Communication that overlaps compute, and the gather / reduce-scatter pattern ZeRO-3 and FSDP share.

Overlap (PyTorch DDP, Li et al. 2020 "PyTorch Distributed", Sec. 3.2.3; DeepSpeed overlap_comm;
FSDP/ZeRO-3 prefetch): gradient reductions run bucket by bucket while backward continues, and
ZeRO-3/FSDP prefetch the next layer's parameters while the current one computes, so only what does not
fit under the compute of the same pass is exposed, and at least the last bucket always is.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from planner import offload_time as off
from planner import parallel_comm as pc
from planner.choices import Offload, OffloadDevice
from planner.comm import Group, split_time_s

if TYPE_CHECKING:
    from planner.strategy import TrainConfig


def overlap(comm_s: float, window_s: float, tail_s: float) -> float:
    """Exposed part of communication that runs beside `window_s` of compute; the last bucket (`tail_s`)
    is always exposed."""
    if comm_s <= 0:
        return 0.0
    return max(comm_s - window_s, min(tail_s, comm_s))


def no_overlap(comm_s: float, window_s: float, tail_s: float, busy_factor: float = 1.0) -> float:
    """Devices whose communication runs on the compute cores (the CPU device, gloo): nothing is hidden, and
    a collective beside compute costs `busy_factor` times its time alone."""
    return busy_factor * comm_s


def overlap_for(cfg: TrainConfig):
    """`overlap`, or on a device that does not run communication beside compute, all of it at the device's
    measured cost of a collective issued while the ranks compute (`GPUSpec.busy_comm_factor`)."""
    gpu = cfg.cluster.gpu
    return overlap if gpu.overlaps_comm else partial(no_overlap, busy_factor=gpu.busy_comm_factor)


def sharded_comm(cfg: TrainConfig, g: Group, grad_bytes: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
                 gather_calls: int, rs_calls: int, *, gathers: int, rs_overlap=None) -> tuple[float, float, float]:
    """ZeRO-3 / FSDP: per micro-batch, gather the weights module by module (unit by unit) for forward, and
    again for backward unless they stay unsharded (SHARD_GRAD_OP), and reduce-scatter the gradients in
    buckets; each call pays its latency (planner/collectives.py). With parameter offload the partition
    first crosses the host link (Rajbhandari et al. 2021, ZeRO-Infinity Sec. 5). Prefetching overlaps a
    gather with the previous module's compute, so the first gather of each pass (`tail`) is exposed.
    `rs_overlap`: how the reduce-scatters overlap backward where they do not share the gathers' stream
    (DeepSpeed ZeRO-3 without overlap_comm runs them on the compute stream); None: beside the gathers.
    Returns (total, exposed) seconds per step and the host-to-GPU seconds of offloaded partitions."""
    ga = cfg.grad_accum
    overlap = overlap_for(cfg)
    ag = split_time_s(pc.param_allgather_s, param_bytes_gpu, gather_calls, g)
    rs = split_time_s(pc.grad_reduce_scatter_s, grad_bytes, rs_calls, g)
    h2d = 0.0
    if cfg.offload is Offload.all:
        part = param_bytes_gpu / g.n
        if cfg.offload_device is OffloadDevice.nvme:
            h2d = off.nvme_time_s(part, cfg.cluster.gpus_per_node)
        h2d += off.pcie_time_s(part, cfg.cluster.gpu.host_link_bytes_per_s)
    tail = ag / max(1, gather_calls)
    fwd_exposed = overlap(ag, fwd_s, tail)
    if rs_overlap is None:
        bwd_exposed = overlap((gathers - 1) * ag + rs, bwd_s, tail)
    else:
        bwd_exposed = overlap((gathers - 1) * ag, bwd_s, tail) + rs_overlap(rs, bwd_s, rs / max(1, rs_calls))
    total = ga * (gathers * ag + rs)
    # host-to-GPU copies of offloaded partitions sit on the critical path: DeepSpeed copies the CPU
    # partition into the gather buffer before launching the all-gather (partition_parameters.py,
    # `_all_gather` of ds_tensor), and FSDP's CPUOffload moves the shard to the GPU before unsharding
    return total, ga * (fwd_exposed + bwd_exposed), ga * gathers * h2d
