"""Collective costs: the alpha-beta model of ring and hierarchical (two-level) collectives.

A ring collective over n ranks runs k steps, each paying a latency alpha and moving a share of the
message over the slowest link. nccl-tests `doc/PERFORMANCE.md` defines the bus bandwidth of each
collective from its algorithm bandwidth with these factors, which are the bytes each rank must send
per byte of message:
- all-reduce: 2(n-1)/n  (a reduce-scatter followed by an all-gather, 2(n-1) steps);
- all-gather and reduce-scatter: (n-1)/n  (n-1 steps; `message_bytes` is the full, gathered size);
- point-to-point send/recv: 1.
Across nodes NCCL runs the same rings through every node's NICs; we model the two-level
(hierarchical) form used by NCCL's tree/CollNet and by Horovod's hierarchical all-reduce: reduce-scatter
inside the node over NVLink/PCIe, all-reduce of the 1/g shard across nodes (one NIC per GPU, the g
shards in parallel), all-gather inside the node. Times in seconds, sizes in bytes, bandwidths in bytes/s
per GPU and direction (planner.gpus).
"""

from __future__ import annotations

from dataclasses import dataclass

# Per-step latency of one ring hop: NCCL's tuning model (src/graph/tuning.cc, hwLat) puts an NVLink
# hop at about 0.6-1 us and a network hop at several us; with launch and protocol overheads, nccl-tests
# small-message all-reduce on 8 NVLink GPUs takes ~10-30 us (14 steps).
ALPHA_INTRA_S = 1.5e-6
ALPHA_INTER_S = 6e-6
# Achievable fraction of the nominal link bandwidth: nccl-tests all_reduce_perf on a DGX A100 reaches
# a bus bandwidth of about 230 GB/s of NVLink3's 300 GB/s per direction (NVIDIA DGX A100 user guide
# and nccl-tests PERFORMANCE.md examples), ~0.77; InfiniBand reaches ~90% of line rate but NCCL's
# proxy and PCIe hops lower it to a similar share. `Calibration.comm_efficiency` replaces it.
DEFAULT_COMM_EFFICIENCY = 0.75


@dataclass(frozen=True, kw_only=True, slots=True)
class Group:
    """A communicator: `n` ranks, `per_node` of them on each node, and the links between them."""

    n: int
    per_node: int
    intra_bytes_per_s: float  # effective (already times the efficiency)
    inter_bytes_per_s: float
    alpha_s: float = ALPHA_INTRA_S  # per ring hop inside a node (a measured device replaces NCCL's)
    # All-gather and reduce-scatter inside a node where measured apart from the all-reduce, as (full bytes,
    # seconds) between 2 ranks, already divided by the efficiency (gloo: `GPUSpec.allgather_points`); (): rings at
    # `intra_bytes_per_s`, as NCCL runs all three.
    gather_points: tuple[tuple[float, float], ...] = ()
    scatter_points: tuple[tuple[float, float], ...] = ()
    allreduce_points: tuple[tuple[float, float], ...] = ()  # the same for the all-reduce (`GPUSpec.allreduce_points`)

    @property
    def nodes(self) -> int:
        return max(1, self.n // max(1, self.per_node))


def ring_allreduce_time_s(message_bytes: float, n: int, bandwidth_bytes_per_s: float,
                          alpha_s: float = ALPHA_INTRA_S) -> float:
    """2(n-1) alpha + 2(n-1)/n x M / B (nccl-tests PERFORMANCE.md, all-reduce bus bandwidth factor)."""
    if n <= 1 or message_bytes <= 0:
        return 0.0
    return 2 * (n - 1) * alpha_s + 2 * (n - 1) / n * message_bytes / bandwidth_bytes_per_s


def ring_allgather_time_s(message_bytes: float, n: int, bandwidth_bytes_per_s: float,
                          alpha_s: float = ALPHA_INTRA_S) -> float:
    """(n-1) alpha + (n-1)/n x M / B for the gathered size M (nccl-tests PERFORMANCE.md)."""
    if n <= 1 or message_bytes <= 0:
        return 0.0
    return (n - 1) * alpha_s + (n - 1) / n * message_bytes / bandwidth_bytes_per_s


def ring_reduce_scatter_time_s(message_bytes: float, n: int, bandwidth_bytes_per_s: float,
                               alpha_s: float = ALPHA_INTRA_S) -> float:
    """Same cost as the all-gather of the same full size (nccl-tests PERFORMANCE.md)."""
    return ring_allgather_time_s(message_bytes, n, bandwidth_bytes_per_s, alpha_s)


def p2p_time_s(message_bytes: float, bandwidth_bytes_per_s: float, alpha_s: float = ALPHA_INTRA_S) -> float:
    """One send/recv: alpha + M / B."""
    if message_bytes <= 0:
        return 0.0
    return alpha_s + message_bytes / bandwidth_bytes_per_s


def allreduce_time_s(message_bytes: float, g: Group) -> float:
    """Ring inside one node (at the device's measured times where it has them: gloo); hierarchical across nodes:
    RS (intra) + AR of M/g (inter) + AG (intra)."""
    if g.nodes <= 1:
        if g.allreduce_points and g.n > 1 and message_bytes > 0:
            # a ring all-reduce is 2(n-1) hops of M/n; between 2 ranks 2 hops of M/2: the same bytes per rank as 2
            # ranks at 2(n-1)/n x M, with 2(n-2) more hops
            return measured_collective_s(g.allreduce_points, message_bytes, g.n, g.alpha_s, extra_hops=2 * (g.n - 2))
        return ring_allreduce_time_s(message_bytes, g.n, g.intra_bytes_per_s, g.alpha_s)
    per = min(g.per_node, g.n)
    return (ring_reduce_scatter_time_s(message_bytes, per, g.intra_bytes_per_s, g.alpha_s)
            + ring_allreduce_time_s(message_bytes / per, g.nodes, g.inter_bytes_per_s, ALPHA_INTER_S)
            + ring_allgather_time_s(message_bytes, per, g.intra_bytes_per_s, g.alpha_s))


def allgather_time_s(message_bytes: float, g: Group) -> float:
    """Ring inside one node; across nodes: AG of each GPU's column over the nodes (M/g gathered size)
    through its own NIC, then AG of the full M inside the node. Inside the node at the measured times where
    the device has them (gloo)."""
    return _two_level_gather_s(message_bytes, g, g.gather_points)


def reduce_scatter_time_s(message_bytes: float, g: Group) -> float:
    """The mirror image of `allgather_time_s`, the same cost on rings (NCCL); at the device's measured
    reduce-scatter times where it has them (gloo)."""
    return _two_level_gather_s(message_bytes, g, g.scatter_points)


def _two_level_gather_s(message_bytes: float, g: Group, points: tuple[tuple[float, float], ...]) -> float:
    def intra(m: float, n: int) -> float:
        if points and n > 1 and m > 0:
            return measured_collective_s(points, m, n, g.alpha_s)
        return ring_allgather_time_s(m, n, g.intra_bytes_per_s, g.alpha_s)

    if g.nodes <= 1:
        return intra(message_bytes, g.n)
    per = min(g.per_node, g.n)
    return (ring_allgather_time_s(message_bytes / per, g.nodes, g.inter_bytes_per_s, ALPHA_INTER_S)
            + intra(message_bytes, per))


def measured_collective_s(points: tuple[tuple[float, float], ...], message_bytes: float, n: int,
                          hop_alpha_s: float, extra_hops: int | None = None) -> float:
    """An all-gather / reduce-scatter of full size M over n ranks from its times measured between 2 ranks at full
    sizes `points` (bytes, seconds): a ring moves (n-1)/n x M per rank, as 2 ranks do at the full size
    2(n-1)/n x M, and runs n-2 more hops (nccl-tests PERFORMANCE.md). Piecewise linear between the measured sizes
    (gloo's time per byte grows with the size: 1 to 64 MiB), the end segments extended, at least one hop.
    `extra_hops` (default n - 2) for collectives with more hops per rank (the all-reduce's 2(n - 2))."""
    size = 2 * (n - 1) / n * message_bytes
    pts = sorted(points)
    if len(pts) == 1:
        t = pts[0][1] * size / pts[0][0]
    else:
        i = next((k for k in range(1, len(pts) - 1) if size <= pts[k][0]), len(pts) - 1)
        (b0, t0), (b1, t1) = pts[i - 1], pts[i]
        t = t0 + (t1 - t0) * (size - b0) / (b1 - b0)
    return max(hop_alpha_s, t) + (n - 2 if extra_hops is None else extra_hops) * hop_alpha_s


def split_time_s(collective, total_bytes: float, calls: int, g: Group) -> float:
    """`calls` equal calls of `collective` that move `total_bytes` together: each pays its own latency."""
    if calls <= 0 or total_bytes <= 0:
        return 0.0
    return calls * collective(total_bytes / calls, g)
