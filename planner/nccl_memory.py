"""Device memory NCCL communicators allocate outside PyTorch's caching allocator: nvidia-smi sees it,
`torch.cuda.max_memory_reserved` does not.

Per communicator and GPU, NCCL gives every channel of its ring and tree algorithms one buffer set per peer it
receives from, one buffer per protocol (NCCL src/include/device.h and src/init.cc defaults):
- Simple: NCCL_BUFFSIZE, 4 MiB (DEFAULT_BUFFSIZE; NCCL docs, env NCCL_BUFFSIZE);
- LL: NCCL_LL_LINES_PER_THREAD 8 x NCCL_LL_MAX_NTHREADS 512 x NCCL_STEPS 8 x 16-byte lines = 512 KiB;
- LL128: NCCL_LL128_ELEMS_PER_THREAD 120 x NCCL_LL128_MAX_NTHREADS 640 x NCCL_STEPS 8 x 8 bytes = 4,800 KiB;
9.19 MiB per connection, as a DGX Spark measurement of NCCL's per-connection allocations reads it
(tonyd2wild/DeepSeek-V4.1-Flash-vLLM-DGX-Spark issue 8: "~9.19 MiB" each). "Each channel has its own buffer
for collective operations" (NCCL maintainer, NVIDIA/nccl issue 1450). A ring receives from one peer; an
intra-node tree chain from its parent and its child: three connections per channel. The number of channels is
what NCCL picks for the node's links; memory grows linearly with it (NVIDIA/nccl issue 986, quoting issue 864).

On NVSwitch systems of the Hopper generation NCCL adds NVLink SHARP (NVLS) buffers: NCCL's log on 8 H100s
reads `NVLS comm ... nHeads 8 buffSize 1048576 nvlsPerRankSize 33554432 nvlsTotalSize 268435456`
(NVIDIA/nccl issue 1453): 16 NVLS channels x 2 x 1 MiB per rank of the node, 256 MiB at 8 GPUs.

Check against a measurement: 4 A100s over NVLink, one process group of 3-4 GPUs running an all-reduce costs
688 MB, of 2 GPUs 544 MB (NVIDIA/nccl issue 964); this model gives 24 channels x 3 x 9.19 MiB = 662 MiB
(694 MB, +1%) for the former and 24 x 2 x 9.19 MiB = 462 MB (-15%) for the latter
(tests/planner/test_device_readings.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from planner.choices import Engine, FsdpStrategy, ZeroStage
from planner.gpus import GPUSpec

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

MiB = 2**20
SIMPLE_BUFFER_BYTES = 4 * MiB
LL_BUFFER_BYTES = 8 * 512 * 8 * 16
LL128_BUFFER_BYTES = 120 * 640 * 8 * 8
CONNECTION_BYTES = SIMPLE_BUFFER_BYTES + LL_BUFFER_BYTES + LL128_BUFFER_BYTES
# ring: the previous rank; tree chain: parent and child (one peer serves both roles between 2 ranks)
CONNECTIONS_PER_CHANNEL = 3
NVLS_CHANNELS = 16
NVLS_BUFFER_BYTES = 1 * MiB


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkChannels:
    """Collective channels NCCL runs on a node's links, and whether the node has NVLink SHARP."""

    channels: int
    nvls: bool
    source: str


# by the GPU's intra-node link (planner/gpus.py `intra_node_link`), first match wins
CHANNELS: tuple[tuple[str, LinkChannels], ...] = (
    # H100/H200 SXM on NVSwitch gen3: "16 coll channels" (NCCL log on 8 H800s, NVIDIA/nccl issue 892) plus NVLS
    ("NVLink4 (400 GB/s)", LinkChannels(channels=16, nvls=False,
                                        source="NVIDIA/nccl issue 892: H800, 16 coll channels, 0 nvls channels")),
    ("NVLink4", LinkChannels(channels=16, nvls=True, source="NVIDIA/nccl issues 892 (16 channels), 1453 (NVLS)")),
    ("NVLink3", LinkChannels(channels=24, nvls=False,
                             source="24 channels: the A100 measurement of NVIDIA/nccl issue 964 (688 MB)")),
    ("NVLink2", LinkChannels(channels=12, nvls=False, source="NVLink2 V100: half of NVLink3's link count")),
    ("PCIe", LinkChannels(channels=2, nvls=False, source="PCIe: NCCL's minimum of 2 channels (issue 689)")),
)
NONE = LinkChannels(channels=0, nvls=False, source="no NCCL (gloo on the CPU)")


def link_channels(gpu: GPUSpec) -> LinkChannels:
    if gpu.sm_count == 0:
        return NONE
    for prefix, entry in CHANNELS:
        if gpu.intra_node_link.startswith(prefix):
            return entry
    return CHANNELS[-1][1]


def communicator_bytes(gpu: GPUSpec, ranks: int, ranks_per_node: int) -> float:
    """Bytes one GPU holds for one communicator of `ranks` GPUs (`ranks_per_node` of them on its node)."""
    if ranks <= 1:
        return 0.0
    link = link_channels(gpu)
    out = link.channels * (2 if ranks == 2 else CONNECTIONS_PER_CHANNEL) * CONNECTION_BYTES
    if link.nvls and ranks_per_node > 2:
        out += NVLS_CHANNELS * 2 * NVLS_BUFFER_BYTES * ranks_per_node
    return float(out)


def communicators(cfg: TrainConfig) -> list[tuple[int, int]]:
    """(ranks, ranks on this node) of every NCCL communicator a rank of the plan runs collectives on.

    - The default process group: the Trainer's and accelerate's barriers, DDP's all-reduces, FSDP's
      collectives over the whole data-parallel group.
    - DeepSpeed clones the world group for ZeRO (deepspeed/utils/groups.py `_clone_world_group`:
      `dist.new_group(ranks=range(world))`), a second communicator of the same ranks.
    - FSDP's hybrid sharding: a shard group within the node and a replicate group across nodes (FSDP1
      `_init_intra_and_inter_node_groups`; FSDP2 a 2-D DeviceMesh, one group per dimension).
    - Tensor and pipeline parallel groups."""
    per_node, world = cfg.cluster.gpus_per_node, cfg.world_size
    out = [(world, min(world, per_node))]
    dp = cfg.dp
    if cfg.engine is Engine.deepspeed and cfg.zero > ZeroStage.DISABLED or (
            cfg.engine is Engine.deepspeed and (cfg.tp > 1 or cfg.pp > 1)):
        out.append((dp, min(dp, per_node)))
    if cfg.engine is Engine.fsdp and cfg.fsdp is FsdpStrategy.hybrid_shard:
        shard = min(dp, max(1, per_node // (cfg.tp * cfg.pp)))
        out += [(shard, shard), (dp // shard, 1)]
    if cfg.tp > 1:
        out.append((cfg.tp, cfg.tp))
    if cfg.pp > 1:
        out.append((2, 1 if cfg.tp * cfg.pp > per_node else 2))  # neighbouring stages' send/recv
    return out


def nccl_bytes(cfg: TrainConfig) -> float:
    """NCCL's device buffers per GPU over the plan's communicators."""
    return _total(cfg.cluster.gpu, tuple(communicators(cfg)))


@cache  # the search asks per candidate; GPUs and communicator tuples are hashable
def _total(gpu: GPUSpec, comms: tuple[tuple[int, int], ...]) -> float:
    return sum(communicator_bytes(gpu, ranks, on_node) for ranks, on_node in comms)
