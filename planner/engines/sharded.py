"""Communication that overlaps compute, and the gather / reduce-scatter pattern ZeRO-3 and FSDP share.

Overlap (PyTorch DDP, Li et al. 2020 "PyTorch Distributed", Sec. 3.2.3; DeepSpeed overlap_comm;
FSDP/ZeRO-3 prefetch): gradient reductions run bucket by bucket while backward continues, and
ZeRO-3/FSDP prefetch the next layer's parameters while the current one computes, so only what does not
fit under the compute of the same pass is exposed, and at least the last bucket always is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner import offload_time as off
from planner import parallel_comm as pc
from planner.choices import Offload, OffloadDevice
from planner.comm import Group

if TYPE_CHECKING:
    from planner.strategy import TrainConfig


def overlap(comm_s: float, window_s: float, tail_s: float) -> float:
    """Exposed part of communication that runs beside `window_s` of compute; the last bucket (`tail_s`)
    is always exposed."""
    if comm_s <= 0:
        return 0.0
    return max(comm_s - window_s, min(tail_s, comm_s))


def sharded_comm(cfg: TrainConfig, g: Group, grad_bytes: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
                 bucket_bytes: float, *, gathers: int) -> tuple[float, float, float]:
    """ZeRO-3 / FSDP: per micro-batch, gather the weights for forward (and again for backward unless
    they stay unsharded, SHARD_GRAD_OP) and reduce-scatter the gradients; with parameter offload the
    partition first crosses the host link (Rajbhandari et al. 2021, ZeRO-Infinity Sec. 5).
    Returns (total, exposed) seconds per step and the host-to-GPU seconds of offloaded partitions."""
    ga = cfg.grad_accum
    ag = pc.param_allgather_s(param_bytes_gpu, g)
    rs = pc.grad_reduce_scatter_s(grad_bytes, g)
    h2d = 0.0
    if cfg.offload is Offload.all:
        part = param_bytes_gpu / g.n
        if cfg.offload_device is OffloadDevice.nvme:
            h2d = off.nvme_time_s(part, cfg.cluster.gpus_per_node)
        h2d += off.pcie_time_s(part, cfg.cluster.gpu.host_link_bytes_per_s)
    tail = pc.param_allgather_s(min(bucket_bytes, param_bytes_gpu), g)
    fwd_exposed = overlap(ag, fwd_s, tail)
    bwd_exposed = overlap((gathers - 1) * ag + rs, bwd_s, tail)
    total = ga * (gathers * ag + rs)
    # host-to-GPU copies of offloaded partitions sit on the critical path: DeepSpeed copies the CPU
    # partition into the gather buffer before launching the all-gather (partition_parameters.py,
    # `_all_gather` of ds_tensor), and FSDP's CPUOffload moves the shard to the GPU before unsharding
    return total, ga * (fwd_exposed + bwd_exposed), ga * gathers * h2d
