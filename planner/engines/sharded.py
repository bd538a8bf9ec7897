"""Communication that overlaps compute, and the gather / reduce-scatter pattern ZeRO-3 and FSDP share.

Overlap (PyTorch DDP, Li et al. 2020 "PyTorch Distributed", Sec. 3.2.3; DeepSpeed overlap_comm;
FSDP/ZeRO-3 prefetch): gradient reductions run bucket by bucket while backward continues, and
ZeRO-3/FSDP prefetch the next layer's parameters while the current one computes, so only what does not
fit under the compute of the same pass is exposed, and at least the last bucket always is.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def overlap_for(cfg: TrainConfig, *, issued_async: bool = True):
    """`overlap`, or on a device that does not run communication beside compute (the CPU over gloo), all of it:
    - a collective issued asynchronously runs on gloo's worker thread while the rank's main thread computes, and
      costs the device's measured factor over its time alone (`GPUSpec.busy_comm_factor`, measured on DDP, whose
      reducer issues its bucket all-reduces so: torch/csrc/distributed/c10d/reducer.cpp);
    - a collective issued synchronously (`async_op=False`: the main thread waits in `work.wait()` and nothing
      computes beside it) costs its time alone, as the device fit measures it: ZeRO-1/2's bucket all-reduce
      (stage_1_and_2.py `allreduce_bucket`) and partition all-gather, ZeRO-3's reduce-scatter
      (runtime/comm/coalesced_collectives.py `_torch_reduce_scatter_fn`: async_op=False), and every FSDP2
      collective (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py: `foreach_all_gather` with
      `unshard_async_op` False by default, `foreach_reduce`'s reduce-scatter without async_op; FSDP1's likewise).
      On a GPU the CUDA streams let even these run beside compute; on the CPU's one core per rank they do not.
      Each such call between compute segments costs a fixed time more (`sync_calls_s`)."""
    gpu = cfg.cluster.gpu
    if gpu.overlaps_comm:
        return overlap
    return partial(no_overlap, busy_factor=gpu.busy_comm_factor if issued_async else 1.0)


def sync_calls_s(cfg: TrainConfig, calls: float) -> float:
    """What `calls` synchronous collectives between the ranks' compute cost more than back to back, on a device
    whose communication runs on the compute cores (`GPUSpec.sync_call_s`, measured by the device fit: the rank that
    arrives first waits for the other, and a blocked rank's threads wake on busy cores); 0 on GPUs."""
    gpu = cfg.cluster.gpu
    return 0.0 if gpu.overlaps_comm else calls * gpu.sync_call_s


def backward_chain_s(g: Group, grad_bytes: float, param_bytes_gpu: float, gather_calls: int, rs_calls: int,
                     gathers: int) -> float:
    """Seconds per micro-batch of ZeRO-3's / FSDP's backward-side collectives as sharded_comm chains them on a device
    that overlaps communication: the backward gathers (`gathers` - 1: forward has the first) and the gradients'
    reduce-scatter."""
    ag = split_time_s(pc.param_allgather_s, param_bytes_gpu, gather_calls, g)
    rs = split_time_s(pc.grad_reduce_scatter_s, grad_bytes, rs_calls, g)
    return (gathers - 1) * ag + rs


@dataclass(frozen=True, kw_only=True)
class PassSeconds:
    """One micro-batch of a sharded engine's collectives, in seconds, with the parts no compute can hide."""

    forward_gathers_s: float
    backward_gathers_s: float
    reduce_scatters_s: float
    forward_first_s: float  # the first gather of forward: nothing computes before it
    backward_gather_first_s: float  # the first gather of backward, where gathers and reductions share no stream
    reduce_scatter_last_s: float  # the last reduction, where they do not
    backward_last_s: float  # what stays exposed of backward's chain where they share one (sharded_comm)
    backward_gathers_last_s: float  # ... of a backward that gathers and reduces nothing (the Trainer's no_sync)
    gather_calls: int
    reduce_scatter_calls: int
    gathered_bytes: tuple[tuple[float, int], ...]  # (unsharded bytes of one pass, passes): the offloaded copies


def sharded_comm(cfg: TrainConfig, g: Group, grad_bytes: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
                 gather_calls: int, rs_calls: int, *, gathers: int, rs_overlap=None, gathers_async: bool,
                 rs_async: bool) -> tuple[float, float, float]:
    """ZeRO-3 / FSDP: per micro-batch, gather the weights module by module (unit by unit) for forward, and
    again for backward unless they stay unsharded (SHARD_GRAD_OP), and reduce-scatter the gradients in
    buckets; each call pays its latency (planner/collectives.py). With parameter offload the partition
    first crosses the host link (Rajbhandari et al. 2021, ZeRO-Infinity Sec. 5). Prefetching overlaps a
    gather with the previous module's compute, so the first gather of each pass (`tail`) is exposed.
    `rs_overlap`: how the reduce-scatters overlap backward where they do not share the gathers' stream
    (DeepSpeed ZeRO-3 without overlap_comm runs them on the compute stream); None: beside the gathers.
    `gathers_async` / `rs_async`: whether the engine issues them asynchronously (`overlap_for`: on the CPU device
    that decides whether they cost the busy factor). Returns (total, exposed) seconds per step and the host-to-GPU
    seconds of offloaded partitions."""
    ag = split_time_s(pc.param_allgather_s, param_bytes_gpu, gather_calls, g)
    rs = split_time_s(pc.grad_reduce_scatter_s, grad_bytes, rs_calls, g)
    tail, rs_tail = ag / max(1, gather_calls), rs / max(1, rs_calls)
    passes = PassSeconds(forward_gathers_s=ag, backward_gathers_s=(gathers - 1) * ag, reduce_scatters_s=rs,
                         forward_first_s=tail, backward_gather_first_s=tail, reduce_scatter_last_s=rs_tail,
                         backward_last_s=tail, backward_gathers_last_s=tail, gather_calls=gathers * gather_calls,
                         reduce_scatter_calls=rs_calls,
                         gathered_bytes=((param_bytes_gpu, gathers),))
    # DeepSpeed ZeRO-3 is not under the Trainer's no_sync (the Trainer leaves accumulation to DeepSpeed's engine,
    # whose stage3.py reduce hooks reduce-scatter in every backward): every micro-batch gathers and reduces
    return pass_comm(cfg, g, passes, fwd_s, bwd_s, rs_overlap=rs_overlap, gathers_async=gathers_async,
                     rs_async=rs_async, gathering=cfg.grad_accum, reductions=cfg.grad_accum)


def pass_comm(cfg: TrainConfig, g: Group, p: PassSeconds, fwd_s: float, bwd_s: float, *, rs_overlap=None,
              gathers_async: bool, rs_async: bool, gathering: int, reductions: int) -> tuple[float, float, float]:
    """sharded_comm's overlap of one micro-batch's collectives `p` with forward (`fwd_s`) and backward (`bwd_s`),
    over the step's micro-batches: (total, exposed) seconds per step and the host-to-GPU seconds of offloaded
    partitions, each gathered pass's partition copied first. `gathering`: the step's micro-batches that gather
    (the engine's gathering_micro_batches; fewer than grad_accum only where backward gathers nothing, so every
    micro-batch's backward gathers the same); `reductions`: those whose backward also reduce-scatters (the engine's
    reductions_per_step: under the Trainer's no_sync FSDP's last one only), the others' backward has only its
    gathers to hide."""
    gather_overlap = overlap_for(cfg, issued_async=gathers_async)
    h2d = 0.0
    if cfg.offload is Offload.all:
        for pass_bytes, passes in p.gathered_bytes:
            part, one = pass_bytes / g.n, 0.0
            if cfg.offload_device is OffloadDevice.nvme:
                one = off.nvme_time_s(part, cfg.cluster.gpus_per_node)
            one += off.pcie_time_s(part, cfg.cluster.gpu.host_link_bytes_per_s)
            h2d += gathering * passes * one
    fwd_exposed = gathering * gather_overlap(p.forward_gathers_s, fwd_s, p.forward_first_s)
    if rs_overlap is None and cfg.cluster.gpu.overlaps_comm:
        bwd_exposed = reductions * overlap(p.backward_gathers_s + p.reduce_scatters_s, bwd_s, p.backward_last_s) + \
            (gathering - reductions) * overlap(p.backward_gathers_s, bwd_s, p.backward_gathers_last_s)
    else:
        rs_side = rs_overlap if rs_overlap is not None else overlap_for(cfg, issued_async=rs_async)
        bwd_exposed = gathering * gather_overlap(p.backward_gathers_s, bwd_s, p.backward_gather_first_s) + \
            reductions * rs_side(p.reduce_scatters_s, bwd_s, p.reduce_scatter_last_s)
    sync = sync_calls_s(cfg, (0 if rs_async else reductions * p.reduce_scatter_calls) +
                        (0 if gathers_async else gathering * p.gather_calls))
    total = gathering * (p.forward_gathers_s + p.backward_gathers_s) + reductions * p.reduce_scatters_s + sync
    # host-to-GPU copies of offloaded partitions sit on the critical path: DeepSpeed copies the CPU
    # partition into the gather buffer before launching the all-gather (partition_parameters.py,
    # `_all_gather` of ds_tensor), and FSDP's CPUOffload moves the shard to the GPU before unsharding
    return total, fwd_exposed + bwd_exposed + sync, h2d
