"""Communication of each strategy per micro-batch or per step, in seconds, on top of `planner.comm`.

Rank layout (Megatron-LM and DeepSpeed's default topology, Narayanan et al. 2021 Sec. 3.3): tensor
parallel ranks are adjacent (inside one node, over NVLink), pipeline stages next, data-parallel
replicas outermost, so the data-parallel group has gpus_per_node / (TP x PP) ranks per node.

Volumes (Rajbhandari et al. 2020, ZeRO, Sec. 7): DDP and ZeRO-1/2 move 2 x the gradient bytes per
rank (an all-reduce, or reduce-scatter + all-gather); ZeRO-3 / FSDP full_shard add a parameter
all-gather in forward and again in backward: 3 x, "1.5x the baseline DP". Tensor parallelism
all-reduces the b x s x h activations twice per layer in forward and twice in backward (Megatron's
f and g operators, Shoeybi et al. 2019 Fig. 3); sequence parallelism replaces each all-reduce with a
reduce-scatter plus an all-gather of the same total cost (Korthikanti et al. 2022, Sec. 4.2.2).
"""

from __future__ import annotations

from planner.comm import ALPHA_INTRA_S, Group, allgather_time_s, allreduce_time_s, p2p_time_s, reduce_scatter_time_s
from planner.gpus import Cluster, GPUSpec


def hop_alpha_s(gpu: GPUSpec) -> float:
    """Latency per ring hop: NCCL's (planner/comm.py), or the device's measured per-call cost of a 2-rank
    all-reduce, which runs 2(n-1) = 2 hops."""
    return ALPHA_INTRA_S if gpu.collective_alpha_s is None else gpu.collective_alpha_s / 2


def dp_group(cluster: Cluster, tp: int, pp: int, dp: int, efficiency: float) -> Group:
    """The data-parallel communicator: `dp` ranks strided by TP x PP."""
    per_node = max(1, min(dp, cluster.gpus_per_node // (tp * pp)))
    gpu = cluster.gpu
    return Group(n=dp, per_node=per_node, intra_bytes_per_s=gpu.intra_node_bytes_per_s * efficiency,
                 inter_bytes_per_s=gpu.inter_node_bytes_per_s * efficiency, alpha_s=hop_alpha_s(gpu),
                 **_gather_scatter(gpu, efficiency))


def intra_node_group(cluster: Cluster, n: int, efficiency: float) -> Group:
    """A group inside one node (TP, FSDP hybrid shards)."""
    gpu = cluster.gpu
    return Group(n=n, per_node=n, intra_bytes_per_s=gpu.intra_node_bytes_per_s * efficiency,
                 inter_bytes_per_s=gpu.inter_node_bytes_per_s * efficiency, alpha_s=hop_alpha_s(gpu),
                 **_gather_scatter(gpu, efficiency))


def _gather_scatter(gpu: GPUSpec, efficiency: float) -> dict[str, tuple[tuple[float, float], ...]]:
    """The device's measured all-gather / reduce-scatter / all-reduce times (gloo), at the same efficiency as its
    bandwidths."""
    return {"gather_points": tuple((b, t / efficiency) for b, t in gpu.allgather_points),
            "scatter_points": tuple((b, t / efficiency) for b, t in gpu.reduce_scatter_points),
            "allreduce_points": tuple((b, t / efficiency) for b, t in gpu.allreduce_points)}


def grad_allreduce_s(grad_bytes: float, g: Group) -> float:
    """DDP / ZeRO-0 / FSDP no_shard: one all-reduce of every trainable gradient."""
    return allreduce_time_s(grad_bytes, g)


def grad_reduce_scatter_s(grad_bytes: float, g: Group) -> float:
    """ZeRO-1/2/3 and FSDP: each rank keeps the reduced gradients of its partition."""
    return reduce_scatter_time_s(grad_bytes, g)


def param_allgather_s(param_bytes: float, g: Group) -> float:
    """ZeRO-1/2 after the step (updated partitions) or ZeRO-3 / FSDP before each use (whole weights)."""
    return allgather_time_s(param_bytes, g)


def tp_time_per_micro_batch_s(*, b: int, s: int, h: int, act_bytes: int, layers: int, t: int,
                              recompute_forward: bool, g: Group) -> float:
    """Tensor-parallel all-reduces of one micro-batch over the stage's layers: 2 in forward, 2 in
    backward per layer, 2 more when full recomputation repeats the forward (Shoeybi et al. 2019,
    Sec. 3; Korthikanti et al. 2022, Sec. 4.2.2). Not overlapped with compute."""
    if t <= 1:
        return 0.0
    per_layer = 4 + (2 if recompute_forward else 0)
    return layers * per_layer * allreduce_time_s(b * s * h * act_bytes, g)


def pp_time_per_message_s(message_bytes: float, cluster: Cluster, tp: int, pp: int, efficiency: float) -> float:
    """One activation (or gradient) crossing a stage boundary; the slowest boundary decides, which is a
    network hop once the pipeline spans nodes."""
    gpu = cluster.gpu
    crosses_nodes = tp * pp > cluster.gpus_per_node
    if crosses_nodes:
        from planner.comm import ALPHA_INTER_S

        return p2p_time_s(message_bytes, gpu.inter_node_bytes_per_s * efficiency, ALPHA_INTER_S)
    return p2p_time_s(message_bytes, gpu.intra_node_bytes_per_s * efficiency)
