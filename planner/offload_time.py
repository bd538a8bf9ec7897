"""Offload: PCIe traffic between GPU and host, the optimizer step on the CPU, and NVMe traffic.

ZeRO-Offload (Ren et al. 2021, "ZeRO-Offload: Democratizing Billion-Scale Model Training", arXiv
2101.06840), Sec. 4: the 16-bit gradients of a rank's partition go to the host during backward, the
CPU runs Adam on the fp32 master copy (DeepSpeed's vectorized CPU-Adam), and the updated 16-bit
parameters return to the GPU. ZeRO-Infinity (Rajbhandari et al. 2021, arXiv 2104.07857) moves the
optimizer states (and parameters) to NVMe and streams them through host memory every step.
"""

from __future__ import annotations

# DeepSpeed CPU-Adam throughput on one host: Ren et al. 2021, Table 2 measures about 2.6 s for an
# Adam step over 10B parameters with CPU-Adam on a DGX-2 host (2x 24-core Xeon Platinum 8168),
# against about 6x longer for PyTorch's CPU Adam. The host's cores are shared by all its ranks.
CPU_ADAM_PARAMS_PER_S_PER_NODE = 10e9 / 2.6
# PyTorch's own (non-fused) AdamW on CPU, as FSDP's CPU offload runs it: ~6x slower (same table;
# re-checked against DeepSpeed's ZeRO-Offload tutorial, deepspeed.ai/tutorials/zero-offload:
# "DeepSpeedCPUAdam is 5X-7X faster than the standard PyTorch implementation").
TORCH_CPU_ADAM_PARAMS_PER_S_PER_NODE = CPU_ADAM_PARAMS_PER_S_PER_NODE / 6
# The DGX-2 host behind that rate: two 24-core Xeon Platinum 8168, 48 cores, each updating its share of the
# parameters (CPU-Adam's `#pragma omp parallel for` over the partition, deepspeed/ops/csrc/adam/cpu_adam_impl.cpp).
CPU_ADAM_HOST_CORES = 48
# Threads each rank's CPU optimizer gets: torchrun and `accelerate launch` set OMP_NUM_THREADS=1 for every process
# when a node runs several (torch/distributed/run.py: "Setting OMP_NUM_THREADS environment variable for each process
# to be 1 in default"; accelerate/utils/launch.py: num_cpu_threads_per_process, default 1), so each rank's
# partition is updated by one core while the node's other ranks update theirs.
CPU_OPTIMIZER_THREADS_PER_RANK = 1
# One PCIe Gen4 x4 NVMe drive per node (the planner's default 2 TiB local NVMe): ~7 GB/s sequential
# read, ~4 GB/s write on datacenter U.2 drives (e.g. Samsung PM9A3 product brief); mixed 5 GB/s.
NVME_BYTES_PER_S_PER_NODE = 5e9
# Bytes of optimizer state DeepSpeed keeps per parameter in ZeRO-Infinity: fp32 master, m and v.
ADAM_STATE_BYTES = 12.0


def pcie_time_s(n_bytes: float, host_link_bytes_per_s: float) -> float:
    """Bytes over one GPU's host link (one direction)."""
    return n_bytes / host_link_bytes_per_s if n_bytes > 0 else 0.0


def cpu_adam_time_s(params_per_rank: float, ranks_per_node: int, *, deepspeed_cpu_adam: bool = True,
                    threads_per_rank: int = CPU_OPTIMIZER_THREADS_PER_RANK) -> float:
    """The optimizer step on the host: every rank of the node updates its partition at once on its own
    `threads_per_rank` cores, at Ren et al. 2021's CPU-Adam rate per core (Table 2 over the DGX-2's 48 cores),
    and never faster than the whole host's rate shared by the node's ranks."""
    rate = CPU_ADAM_PARAMS_PER_S_PER_NODE if deepspeed_cpu_adam else TORCH_CPU_ADAM_PARAMS_PER_S_PER_NODE
    per_rank = min(rate * threads_per_rank / CPU_ADAM_HOST_CORES, rate / max(1, ranks_per_node))
    return params_per_rank / per_rank


def nvme_time_s(bytes_per_rank: float, ranks_per_node: int,
                nvme_bytes_per_s_per_node: float = NVME_BYTES_PER_S_PER_NODE) -> float:
    """Traffic every rank of a node moves to or from the node's NVMe, sharing its bandwidth."""
    return bytes_per_rank * ranks_per_node / nvme_bytes_per_s_per_node
