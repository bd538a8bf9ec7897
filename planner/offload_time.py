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
# One PCIe Gen4 x4 NVMe drive per node (the planner's default 2 TiB local NVMe): ~7 GB/s sequential
# read, ~4 GB/s write on datacenter U.2 drives (e.g. Samsung PM9A3 product brief); mixed 5 GB/s.
NVME_BYTES_PER_S_PER_NODE = 5e9
# Bytes of optimizer state DeepSpeed keeps per parameter in ZeRO-Infinity: fp32 master, m and v.
ADAM_STATE_BYTES = 12.0


def pcie_time_s(n_bytes: float, host_link_bytes_per_s: float) -> float:
    """Bytes over one GPU's host link (one direction)."""
    return n_bytes / host_link_bytes_per_s if n_bytes > 0 else 0.0


def cpu_adam_time_s(params_per_rank: float, ranks_per_node: int, *, deepspeed_cpu_adam: bool = True) -> float:
    """The optimizer step on the host: every rank of the node updates its partition at once, sharing the
    host's cores (Ren et al. 2021, Table 2 throughput)."""
    rate = CPU_ADAM_PARAMS_PER_S_PER_NODE if deepspeed_cpu_adam else TORCH_CPU_ADAM_PARAMS_PER_S_PER_NODE
    return params_per_rank * ranks_per_node / rate


def nvme_time_s(bytes_per_rank: float, ranks_per_node: int,
                nvme_bytes_per_s_per_node: float = NVME_BYTES_PER_S_PER_NODE) -> float:
    """Traffic every rank of a node moves to or from the node's NVMe, sharing its bandwidth."""
    return bytes_per_rank * ranks_per_node / nvme_bytes_per_s_per_node
