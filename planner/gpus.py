"""GPU specs (datasheet figures) and cluster parsing (`8xA800`, `2x8xH100`, `2xCPU`).

Peaks are dense (no 2:4 sparsity) tensor-core throughput. Link bandwidths are per GPU, one
direction (NVIDIA quotes NVLink as bidirectional totals: A100's 600 GB/s is 300 GB/s each way).
`hbm_bytes` is the total nvidia-smi reports, not the marketing round number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from planner.errors import PlanError, unknown_name_error
from planner.input_checks import check_cluster_size

GB = 1e9
TFLOPS = 1e12
MiB = 2**20
# Host dispatch time of one eager PyTorch op on a GPU node's host: python + autograd + ATen dispatcher +
# cudaLaunchKernel, "~5-25 us of CPU-side work per op" (J. Lin, "From PyTorch op to kernel launch", the
# dispatch-chain table); we take 10 us.
HOST_OP_S = 10e-6


@dataclass(frozen=True, kw_only=True)
class GPUSpec:
    name: str
    hbm_bytes: int
    peak_bf16_flops_per_s: float  # 0 where the GPU has no bf16 tensor cores
    peak_fp16_flops_per_s: float
    peak_tf32_flops_per_s: float
    peak_fp32_flops_per_s: float
    hbm_bytes_per_s: float
    intra_node_link: str  # "NVLink3", "PCIe4", ...
    intra_node_bytes_per_s: float  # per GPU, one direction
    inter_node_network: str
    inter_node_bytes_per_s: float  # per GPU, one direction (one NIC per GPU on DGX/HGX nodes)
    host_link_bytes_per_s: float  # GPU <-> host (PCIe), one direction: offload traffic
    gpus_per_node: int
    source: str
    # Memory the device keeps outside the tensors a step allocates: the CUDA context with lazy
    # module loading (CUDA_MODULE_LOADING=LAZY, the default since CUDA 11.7) plus cuBLAS/NCCL
    # workspaces, about 0.5 GiB as nvidia-smi shows for an idle torch process; 0 on the CPU.
    runtime_overhead_bytes: int = 512 * 2**20
    # PyTorch's caching allocator holds freed blocks it cannot reuse (fragmentation): reserved minus
    # allocated at the peak, as a fraction of allocated. 0 on the CPU, where tensors go back to malloc.
    allocator_reserve_fraction: float = 0.05
    # Streaming multiprocessors (the datasheet / architecture whitepaper of each GPU): GEMM tiles run one
    # per SM at a time, so a GEMM's last partial wave idles SMs (NVIDIA GEMM guide, Sec. 3.2). 0 on the CPU.
    sm_count: int = 0
    # Host time to dispatch one eager PyTorch op (python -> dispatcher -> kernel launch or CPU kernel call).
    host_op_s: float = HOST_OP_S
    # CPU GEMM curve rate = R x m / (m + m0) (planner/kernels.py): the half-rate rows m0; 0 on GPUs (waves
    # instead). Narrow outputs (LoRA's n = r) run at a measured share of that rate: (n, share) pairs,
    # interpolated between, 1 above the widest; () on GPUs.
    gemm_half_rate_rows: float = 0.0
    gemm_narrow_cols: tuple[tuple[int, float], ...] = ()
    # LoRA's narrow inner dimension (k = r: lora_B's forward, lora_A's input gradient) likewise: (k, share) pairs of
    # that rate, measured writing into cold outputs (profiler/device_fit.py); () on GPUs.
    gemm_narrow_inner: tuple[tuple[int, float], ...] = ()
    # Values per second of a training-mode dropout (mask generation, compute-bound on the CPU's RNG) where
    # measured; None: a GPU's in-kernel Philox RNG, whose cost is the dropout's memory traffic.
    dropout_values_per_s: float | None = None
    # Fixed cost of one collective call where measured (gloo on the CPU); None: NCCL's per-hop alphas
    # (planner/comm.py).
    collective_alpha_s: float | None = None
    # Whether communication runs beside compute. On the CPU device each rank owns one core and gloo's
    # reductions and copies run on it, so communication adds to compute.
    overlaps_comm: bool = True
    # On such a device: the time a collective issued while the ranks compute (from backward hooks: DDP
    # buckets, ZeRO reductions and gathers, FSDP units) costs, relative to the same collective alone.
    busy_comm_factor: float = 1.0
    # What each synchronous collective between the ranks' compute (the main thread waits in it: ZeRO-1/2's bucket
    # all-reduce, ZeRO-3's reduce-scatter, FSDP's collectives) costs more than the same call back to back: the rank
    # that arrives first waits, and blocked threads wake on busy cores (profiler/device_fit.py `sync_call_s`).
    sync_call_s: float = 0.0
    # All-gather and reduce-scatter times where measured apart from the all-reduce, (full bytes, seconds) between 2
    # ranks: the CPU device, where gloo's all_gather_into_tensor and reduce_scatter_tensor are not the ring halves of
    # its all-reduce and cost more per byte as messages grow (profiler/device_fit.py); (): rings at
    # intra_node_bytes_per_s, as NCCL runs all three (planner/comm.py).
    allgather_points: tuple[tuple[float, float], ...] = ()
    reduce_scatter_points: tuple[tuple[float, float], ...] = ()
    # The all-reduce's measured times, (bytes, seconds) between 2 ranks, where a device fit kept them: gloo's time
    # is not one line in the size (on this VM 1.0-1.3 ms at 1 MiB, 2.1-2.7 ms at 1.5 MiB, three runs; in two of four
    # fits of session 10 the 1 MiB point itself was 3 ms), and ZeRO-1/2's reduce buckets of a small model fall there,
    # so the planner interpolates them as it does the gathers'; (): alpha + M / B (collective_alpha_s,
    # intra_node_bytes_per_s), or NCCL's rings.
    allreduce_points: tuple[tuple[float, float], ...] = ()
    # Fraction of the dense peak large GEMMs reach where measured on this machine (`ftplan profile calibrate --device`
    # on CUDA); None: the GPU's published figure (planner/compute.py DEFAULT_COMPUTE_EFFICIENCY). With it the inner
    # size at which a GEMM tile's fixed prologue and epilogue halve its rate (rate x k / (k + k0)); 0: not measured.
    gemm_efficiency: float | None = None
    gemm_half_rate_inner: float = 0.0
    # Fraction of the 16-bit peak FlashAttention-2 (and SDPA's flash kernel) reaches over forward + backward where
    # published (planner/kernels.py flash_attention_s); None: attention runs as its full s x s matmuls at the
    # GEMM rate (the CPU; the V100, where SDPA runs the memory-efficient kernel: see its entry). On the T4 the share
    # is the memory-efficient kernel's (`_MEM_EFFICIENT_TURING`).
    attention_efficiency: float | None = None
    # SDPA's CPU flash kernel where measured (the CPU device fit, fp32): (query length, head size, forward seconds,
    # backward seconds per computed score element), which planner/kernels.py cpu_sdpa_attention_s interpolates; ():
    # the attention efficiency above, or the full s x s matmuls at the GEMM rate.
    sdpa_points: tuple[tuple[float, float, float, float], ...] = ()
    # The rate an optimizer step with its gradient clipping moves the bytes planner/timing.py counts for them
    # (torch.optim.AdamW's foreach kernels and clip_grad_norm_) where measured (the CPU device fit); None: the
    # memory bandwidth hbm_bytes_per_s.
    optimizer_bytes_per_s: float | None = None
    # torch.optim.AdamW's single-tensor loop (the implementation torch picks on the CPU: planner/torch_adamw.py) with
    # its clip_grad_norm_, where measured (the CPU device fit): the rate it moves the same counted bytes and the
    # seconds it adds per parameter tensor; None: planner/torch_adamw.py's fallbacks (from optimizer_bytes_per_s and
    # host_op_s by measured ratios).
    adamw_single_tensor_bytes_per_s: float | None = None
    adamw_single_tensor_s: float | None = None
    # Host time peft's lora.Linear adds per adapted linear and micro-batch (forward + backward) over its frozen base
    # linear where measured (the CPU device fit); None: planner/kernels.py OPS_PER_LORA_LINEAR eager ops per pass at
    # host_op_s.
    lora_linear_host_s: float | None = None
    # CUDA compute capability (major, minor) of the board, from `_COMPUTE_CAPABILITY`; None: not a CUDA device (the
    # CPU). FlashAttention-2 runs from 8.0 (Ampere) on: `flash_attention_2_problem`.
    compute_capability: tuple[int, int] | None = None
    # Share of `hbm_bytes_per_s` that a step's memory-bound kernels reach on the bytes planner/kernels.py counts for
    # them (every op's inputs and outputs, as a dispatch mode sees them): a layer's eager elementwise, reduction, cast
    # and cat kernels, the loss, eager attention's score traffic, and fused ones (Liger, Inductor) alike; not the
    # optimizer's multi-tensor kernels, which stream whole parameter chunks at the memory bandwidth. 1.0 where
    # hbm_bytes_per_s is itself a measured rate of such ops (the CPU device fit); GPUs take
    # ELEMENTWISE_BANDWIDTH_FRACTION.
    elementwise_bandwidth_fraction: float = 1.0
    # Host work per ZeRO-3 submodule / FSDP unit and micro-batch where measured (the CPU); None: counted in
    # eager ops (planner/collectives.py) times host_op_s.
    zero3_module_host_s: float | None = None
    fsdp_unit_host_s: float | None = None

    # The search hashes the GPU on every memoized call (planner.timing, planner.nccl_memory): computed once per object,
    # over the same fields the dataclass's own hash reads.
    def __hash__(self) -> int:
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", cached)
        return cached

    @property
    def supports_bf16(self) -> bool:
        return self.peak_bf16_flops_per_s > 0

    @property
    def elementwise_bytes_per_s(self) -> float:
        """The rate memory-bound kernels move the bytes planner/kernels.py counts for them."""
        return self.hbm_bytes_per_s * self.elementwise_bandwidth_fraction


# The share of the datasheet memory bandwidth memory-bound kernels reach on the bytes counted for them, on GPUs: the
# median over the published per-kernel benchmarks of Liger-Kernel (linkedin/Liger-Kernel,
# benchmark/data/all_benchmark_data.csv, forward + backward of transformers' LlamaRMSNorm, apply_rotary_pos_emb and
# torch's CrossEntropyLoss and LayerNorm on A100-SXM4-80GB, an eager residual add + RMSNorm and torch's LayerNorm on
# H100 80GB HBM3, Liger's RMSNorm and cross-entropy kernels on A100), each row's bytes counted op by op as the planner
# counts a layer's and its time taken as the slope between its two largest sizes (launch overhead cancels). The rows
# range 0.32-0.96 (tests/validation/test_elementwise_published.py reproduces them).
ELEMENTWISE_BANDWIDTH_FRACTION = 0.55


# CUDA compute capability of each catalog board (NVIDIA, "CUDA GPUs - Compute Capability", developer.nvidia.com/
# cuda-gpus): Volta 7.0, Turing 7.5, Ampere 8.0 (A100, A800) and 8.6 (GA102: A10G, RTX 3090), Ada 8.9, Hopper 9.0.
_COMPUTE_CAPABILITY = {"A100-80G": (8, 0), "A100-40G": (8, 0), "A800": (8, 0), "H100": (9, 0), "H800": (9, 0),
                       "H200": (9, 0), "V100-32G": (7, 0), "A10G": (8, 6), "L40S": (8, 9), "RTX3090": (8, 6),
                       "RTX4090": (8, 9), "T4": (7, 5)}
# FlashAttention-2 "currently supports: Ampere, Ada, or Hopper GPUs (e.g., A100, RTX 3090, RTX 4090, H100). Support
# for Turing GPUs (T4, RTX 2080) is coming soon" (Dao-AILab/flash-attention README, "NVIDIA CUDA Support"); its
# kernels refuse anything older ("FlashAttention only supports Ampere GPUs or newer."), and torch's SDPA flash and
# cuDNN kernels take [sm80, sm121] (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp,
# check_flash_attention_hardware_support, check_cudnn_hardware_support).
FLASH_ATTENTION_2_MIN_CAPABILITY = (8, 0)


def is_cpu(gpu: GPUSpec) -> bool:
    """The catalog's CPU entry: ranks are CPU processes (torch tensors on device "cpu")."""
    return gpu.name == "CPU"


def _gpu(**kw) -> GPUSpec:
    if kw.get("sm_count", 0) > 0:
        kw.setdefault("elementwise_bandwidth_fraction", ELEMENTWISE_BANDWIDTH_FRACTION)
    kw.setdefault("compute_capability", _COMPUTE_CAPABILITY.get(kw["name"]))
    return GPUSpec(**kw)


def flash_attention_2_problem(gpu: GPUSpec) -> str | None:
    """Why `--attn flash` (transformers' flash_attention_2) cannot run on `gpu`, or None where it can: a CUDA board
    older than Ampere. The CPU runs it as SDPA (runner/model.py), as a CUDA device fit keeps its board's name."""
    cc = gpu.compute_capability
    if cc is None or cc >= FLASH_ATTENTION_2_MIN_CAPABILITY:
        return None
    return (f"--attn flash is FlashAttention-2, which needs an Ampere or newer GPU (compute capability 8.0+); the "
            f"{gpu.name} is {cc[0]}.{cc[1]}: use --attn sdpa (PyTorch runs its memory-efficient kernel there) "
            "or --attn eager")


# torch.optim.AdamW's single-tensor loop on the CPU against its foreach step.
# Measured beside each other (two processes stepping at once, 9 interleaved rounds, twice; the CPU shared with other
# work, 2026-12-07 08:49): the single-tensor clip + step over 24 x 1 Mi fp32 parameters took 0.848 and 0.898 of the
# foreach one's time (0.75-0.89 in an earlier session's runs), and over 384 x 64 parameters 61 and 68 us per tensor
# above its bytes at the large tensors' rate, 18.3 and 20.6 times a 1-element torch.add timed with them (host_op_s):
# the loop's ten eager ops (planner/torch_adamw.py) and its Python. A device fit without the single-tensor measurement
# (and the catalog's CPU entry below, from the foreach rate and host_op_s of its quiet fit) takes the step from these
# (planner/torch_adamw.py single_tensor_bytes_per_s, single_tensor_host_s).
SINGLE_OVER_FOREACH_TIME = 0.873
SINGLE_TENSOR_HOST_OPS = 19.5

_PCIE3, _PCIE4, _PCIE5 = 16 * GB, 32 * GB, 64 * GB  # x16, one direction, nominal
# gloo's collectives between the CPU entry's 2 ranks, (full bytes, seconds): per size the median of the 3 passes of
# profiler/device_fit.py (fit_cpu_device) that benchmarks/rank_order.py --fit-each-round ran on this 2-core VM on
# 2026-12-06 19:39-19:47 with nothing else running (benchmarks/measured/rank_order_s11e.json, raw.device_fits;
# profiler.device_fit.median_fit). The all-reduce is not one line in the size (2.1 ms at 2 MiB, 3.6 ms at 3 MiB,
# planner/comm.py interpolates); the gather and reduce-scatter jump at 32 MiB (glibc mmaps larger blocks afresh).
# SDPA's causal CPU flash kernel on this VM, fp32, both processes at once (profiler/device_fit.py measure_attention,
# 2026-12-07 03:26, two passes' medians, the machine otherwise idle): (length, head size, forward, backward seconds
# per computed score element). Per element the backward costs 2.3-3.8x the forward (it recomputes the scores and
# their exp and runs three more products), and short sequences cost more per element (at 128 tokens the kernel runs
# blocks of 32 queries against all 128 keys: planner/kernels.py cpu_flash_computed_scores).
_CPU_SDPA_POINTS = ((128, 64, 4.37e-9, 13.6e-9), (256, 64, 3.73e-9, 8.61e-9), (512, 64, 2.99e-9, 7.35e-9),
                         (1024, 64, 2.83e-9, 6.63e-9), (2048, 64, 2.65e-9, 6.20e-9), (128, 128, 7.02e-9, 26.8e-9),
                         (256, 128, 5.76e-9, 16.1e-9), (512, 128, 5.46e-9, 13.2e-9), (1024, 128, 4.63e-9, 10.7e-9),
                         (2048, 128, 4.37e-9, 10.7e-9))
_CPU_ALLREDUCE_POINTS = ((4096, 0.370e-3), (8192, 0.384e-3), (12288, 0.339e-3), (16384, 0.315e-3), (24576, 0.370e-3),
                         (32768, 0.432e-3), (49152, 0.404e-3), (65536, 0.411e-3), (98304, 0.475e-3),
                         (131072, 0.370e-3), (196608, 0.403e-3), (262144, 0.486e-3), (393216, 0.665e-3),
                         (524288, 0.668e-3), (786432, 1.24e-3), (1048576, 0.895e-3), (1572864, 1.46e-3),
                         (2097152, 2.08e-3), (3145728, 3.63e-3), (4194304, 4.42e-3), (6291456, 7.22e-3),
                         (8388608, 8.54e-3), (12582912, 12.3e-3), (16777216, 13.6e-3), (25165824, 21.1e-3))
_CPU_ALLGATHER_POINTS = ((2**18, 0.618e-3), (2**20, 1.28e-3), (2**22, 4.37e-3), (2**24, 15.9e-3),
                         (31 * 2**20, 24.7e-3), (33 * 2**20, 35.0e-3), (2**26, 68.6e-3))
_CPU_REDUCE_SCATTER_POINTS = ((2**18, 1.10e-3), (2**20, 2.41e-3), (2**22, 7.22e-3), (2**24, 25.6e-3),
                              (31 * 2**20, 37.7e-3), (33 * 2**20, 50.5e-3), (2**26, 95.2e-3))


# FlashAttention-2 on A100: up to 73% of peak in forward and 63% in backward (Dao 2023, arXiv 2307.08691, Sec. 4.1
# and Fig. 4-6); backward runs 2.5x the forward's FLOPs, so forward + backward reach 3.5 / (1/0.73 + 2.5/0.63) = 0.65.
_FA2_AMPERE = 0.65
# FlashAttention-2 on H100 "achieves only 35% utilization" (Shah et al. 2024, FlashAttention-3, arXiv 2407.08608,
# abstract); FlashAttention-3 is not what transformers' flash_attention_2 or torch's SDPA run.
_FA2_HOPPER = 0.35
# Ampere and Ada boards other than the A100 (sm86: A10G, RTX 3090; sm89: L40S, RTX 4090) run FlashAttention-2 as well
# (flash-attn supports Ampere, Ada and Hopper; torch's SDPA flash kernel sm80-sm90, sdp_utils.cpp
# check_flash_attention_hardware_support): they take the A100's share of their own dense tensor peak (fp32
# accumulate, which GeForce boards run at half their fp16-accumulate rate: the catalog's bf16 figures). Checked on a
# published benchmark_flash_attention.py run on an RTX A5000 (GA102, sm86; gpu-mode/ring-attention issue 10,
# 2024-02-22): FlashAttention-2 forward + backward 73.0 / 76.6 / 78.6 TFLOPS at head dim 64, sequences 2048 / 4096 /
# 8192, 0.66-0.71 of the board's 111 TFLOPS dense (NVIDIA RTX A5000 datasheet: 222.2 with sparsity). Without it
# these boards priced SDPA's attention as the full s x s matmuls at the GEMM rate, eager attention's cost.
_FA2_AMPERE_ADA = _FA2_AMPERE
# Before Ampere (V100 sm70, T4 sm75) torch's SDPA runs its memory-efficient kernel (xformers' CUTLASS FMHA; flash and
# cuDNN take sm80+, the memory-efficient one sm50-sm121 in fp16 / fp32 below sm80: sdp_utils.cpp
# can_use_mem_efficient_attention). Its share of the T4's peak, from ssiu/flash-attention-turing, a FlashAttention-2
# port to sm75 benchmarked on a T4 against torch's SDPA (fp16, batch 4, 32 heads, head dim 128; Nsight Compute's "SM
# throughput", sm__throughput.avg.pct_of_peak_sustained_elapsed, utils/plot_kernels.py):
# - forward: the memory-efficient kernel's own SM throughput, 27.8 / 29.2 / 30.0 / 30.3 / 30.2 / 30.2% at 512-16384
#   tokens without a mask (README and utils/Compute_Throughput.png, 2025-03-10, torch 2.5.1). The port's 52.5-63.6%
#   over it, 1.89-2.10x, is its published speedup, 1.86-2.07x (utils/Speed_Up.png), within 2%: both kernels' SM
#   throughput tracks their useful work, as the tensor pipe's share does; the later README's "up to 2.19x" at "up to
#   66%" gives 0.30 again. Forward: 0.30.
# - backward: the port runs two kernels, dQ (recomputing S and dP, then dQ: 3 of the forward's 2 s^2 d GEMM units;
#   csrc/flash_attn/src/flash_bwd_kernel.h compute_dq_1rowblock) at up to 45% and dK dV (S, dP, dV, dK: 4 units) at up
#   to 49%, 3 / 0.45 + 4 / 0.49 = 14.8 units of time per peak unit, and is up to 1.51x faster than torch's causal
#   backward (README at dd057fe4, 2026; 1.35x without a mask). The memory-efficient backward does FlashAttention-2's 5
#   units (2.5x the forward) in 1.51 x 14.8 = 22.4: 5 / 22.4 = 0.22 causal (0.25 without a mask).
# - forward + backward: 3.5 / (1 / 0.30 + 2.5 / 0.223) = 0.24 (causal, as fine-tuning runs).
# Nsight's SM throughput is the busiest unit's share, so each figure bounds the tensor share from above, at the clock
# the profiler ran; a T4 held to its 70 W may run below the 1590 MHz its 65 TF datasheet peak assumes, which would put
# the share of that peak lower: 0.24 is the high end (tests/planner/test_attention_boards.py reproduces it). The V100
# (sm70) has no such figure: its entry keeps the matmul stand-in.
_MEM_EFFICIENT_TURING = 0.24

GPUS: dict[str, GPUSpec] = {g.name: g for g in (
    # NVIDIA A100 datasheet (2021): 312 TF bf16/fp16, 156 TF tf32, 19.5 TF fp32, 2039 GB/s (80GB SXM),
    # NVLink3 600 GB/s; DGX A100: 8 GPUs, 8x 200 Gb/s HDR InfiniBand.
    _gpu(name="A100-80G", sm_count=108, attention_efficiency=_FA2_AMPERE,
         hbm_bytes=81920 * MiB, peak_bf16_flops_per_s=312 * TFLOPS,
         peak_fp16_flops_per_s=312 * TFLOPS, peak_tf32_flops_per_s=156 * TFLOPS,
         peak_fp32_flops_per_s=19.5 * TFLOPS, hbm_bytes_per_s=2039 * GB, intra_node_link="NVLink3",
         intra_node_bytes_per_s=300 * GB, inter_node_network="HDR InfiniBand 200 Gb/s",
         inter_node_bytes_per_s=25 * GB, host_link_bytes_per_s=_PCIE4, gpus_per_node=8,
         source="NVIDIA A100 Tensor Core GPU datasheet; DGX A100 user guide"),
    # A100 40GB SXM: 1555 GB/s HBM2.
    _gpu(name="A100-40G", sm_count=108, attention_efficiency=_FA2_AMPERE,
         hbm_bytes=40960 * MiB, peak_bf16_flops_per_s=312 * TFLOPS,
         peak_fp16_flops_per_s=312 * TFLOPS, peak_tf32_flops_per_s=156 * TFLOPS,
         peak_fp32_flops_per_s=19.5 * TFLOPS, hbm_bytes_per_s=1555 * GB, intra_node_link="NVLink3",
         intra_node_bytes_per_s=300 * GB, inter_node_network="HDR InfiniBand 200 Gb/s",
         inter_node_bytes_per_s=25 * GB, host_link_bytes_per_s=_PCIE4, gpus_per_node=8,
         source="NVIDIA A100 Tensor Core GPU datasheet"),
    # A800: export variant of A100-80G with NVLink cut to 400 GB/s; compute and HBM unchanged.
    _gpu(name="A800", sm_count=108, attention_efficiency=_FA2_AMPERE,
         hbm_bytes=81920 * MiB, peak_bf16_flops_per_s=312 * TFLOPS,
         peak_fp16_flops_per_s=312 * TFLOPS, peak_tf32_flops_per_s=156 * TFLOPS,
         peak_fp32_flops_per_s=19.5 * TFLOPS, hbm_bytes_per_s=2039 * GB, intra_node_link="NVLink3 (400 GB/s)",
         intra_node_bytes_per_s=200 * GB, inter_node_network="HDR InfiniBand 200 Gb/s",
         inter_node_bytes_per_s=25 * GB, host_link_bytes_per_s=_PCIE4, gpus_per_node=8,
         source="NVIDIA A800 40GB/80GB Active PCIe/SXM product brief"),
    # NVIDIA H100 SXM5 datasheet: 989.4 TF bf16/fp16 dense, 494.7 tf32, 66.9 fp32, 3.35 TB/s,
    # NVLink4 900 GB/s; DGX H100: 8x 400 Gb/s NDR (ConnectX-7).
    _gpu(name="H100", sm_count=132, attention_efficiency=_FA2_HOPPER,
         hbm_bytes=81559 * MiB, peak_bf16_flops_per_s=989.4 * TFLOPS,
         peak_fp16_flops_per_s=989.4 * TFLOPS, peak_tf32_flops_per_s=494.7 * TFLOPS,
         peak_fp32_flops_per_s=66.9 * TFLOPS, hbm_bytes_per_s=3350 * GB, intra_node_link="NVLink4",
         intra_node_bytes_per_s=450 * GB, inter_node_network="NDR InfiniBand 400 Gb/s",
         inter_node_bytes_per_s=50 * GB, host_link_bytes_per_s=_PCIE5, gpus_per_node=8,
         source="NVIDIA H100 Tensor Core GPU datasheet (SXM5); DGX H100 user guide"),
    # H800 SXM: H100 compute with NVLink cut to 400 GB/s.
    _gpu(name="H800", sm_count=132, attention_efficiency=_FA2_HOPPER,
         hbm_bytes=81559 * MiB, peak_bf16_flops_per_s=989.4 * TFLOPS,
         peak_fp16_flops_per_s=989.4 * TFLOPS, peak_tf32_flops_per_s=494.7 * TFLOPS,
         peak_fp32_flops_per_s=66.9 * TFLOPS, hbm_bytes_per_s=3350 * GB, intra_node_link="NVLink4 (400 GB/s)",
         intra_node_bytes_per_s=200 * GB, inter_node_network="NDR InfiniBand 400 Gb/s",
         inter_node_bytes_per_s=50 * GB, host_link_bytes_per_s=_PCIE5, gpus_per_node=8,
         source="NVIDIA H800 SXM5 product brief"),
    # NVIDIA H200 datasheet: 141 GB HBM3e at 4.8 TB/s, H100 compute, NVLink4 900 GB/s.
    _gpu(name="H200", sm_count=132, attention_efficiency=_FA2_HOPPER,
         hbm_bytes=143771 * MiB, peak_bf16_flops_per_s=989.4 * TFLOPS,
         peak_fp16_flops_per_s=989.4 * TFLOPS, peak_tf32_flops_per_s=494.7 * TFLOPS,
         peak_fp32_flops_per_s=66.9 * TFLOPS, hbm_bytes_per_s=4800 * GB, intra_node_link="NVLink4",
         intra_node_bytes_per_s=450 * GB, inter_node_network="NDR InfiniBand 400 Gb/s",
         inter_node_bytes_per_s=50 * GB, host_link_bytes_per_s=_PCIE5, gpus_per_node=8,
         source="NVIDIA H200 Tensor Core GPU datasheet"),
    # NVIDIA V100 SXM2 datasheet: 125 TF fp16 tensor, 15.7 TF fp32, 900 GB/s, NVLink2 300 GB/s; no bf16/tf32.
    # Attention: no FlashAttention-2 (sm80+); torch's SDPA runs its memory-efficient kernel, which skips the blocks
    # above the causal diagonal at a share of peak no published sm70 figure gives (searched: xformers PRs 362 / 389,
    # which tabulate 2022 kernels against eager attention; CUTLASS example 41; V100 FlashAttention ports' READMEs,
    # speedups only; torch and xformers issues): no attention_efficiency, the full s x s matmuls at the GEMM rate
    # stand in; `profile calibrate --device` on the board measures SDPA and sets it.
    _gpu(name="V100-32G", sm_count=80, hbm_bytes=32768 * MiB, peak_bf16_flops_per_s=0.0,
         peak_fp16_flops_per_s=125 * TFLOPS, peak_tf32_flops_per_s=15.7 * TFLOPS,
         peak_fp32_flops_per_s=15.7 * TFLOPS, hbm_bytes_per_s=900 * GB, intra_node_link="NVLink2",
         intra_node_bytes_per_s=150 * GB, inter_node_network="EDR InfiniBand 100 Gb/s",
         inter_node_bytes_per_s=12.5 * GB, host_link_bytes_per_s=_PCIE3, gpus_per_node=8,
         source="NVIDIA Tesla V100 datasheet (SXM2)"),
    # AWS A10G (g5): GA102, 24 GB GDDR6 at 600 GB/s, PCIe4, no NVLink. It is not NVIDIA's A10 (125 TF
    # bf16, 62.5 TF tf32, 31.2 TF fp32): the A10G trades tensor throughput for CUDA-core throughput,
    # 70 TF fp16/bf16 dense tensor, 35 TF tf32, 35 TF fp32 (Baseten, "NVIDIA A10 vs A10G for ML model
    # inference", spec table; nvidia-smi on g5 shows 23028 MiB).
    _gpu(name="A10G", attention_efficiency=_FA2_AMPERE_ADA,
         sm_count=80, hbm_bytes=23028 * MiB, peak_bf16_flops_per_s=70 * TFLOPS,
         peak_fp16_flops_per_s=70 * TFLOPS, peak_tf32_flops_per_s=35 * TFLOPS,
         peak_fp32_flops_per_s=35 * TFLOPS, hbm_bytes_per_s=600 * GB, intra_node_link="PCIe4",
         intra_node_bytes_per_s=_PCIE4, inter_node_network="Ethernet 100 Gb/s",
         inter_node_bytes_per_s=100 / 8 / 8 * GB, host_link_bytes_per_s=_PCIE4, gpus_per_node=8,
         source="AWS EC2 G5 instances (A10G); Baseten A10 vs A10G spec comparison"),
    # NVIDIA L40S datasheet: 362.05 TF bf16/fp16 dense, 183 TF tf32, 91.6 TF fp32, 48 GB GDDR6 864 GB/s.
    _gpu(name="L40S", attention_efficiency=_FA2_AMPERE_ADA,
         sm_count=142, hbm_bytes=46068 * MiB, peak_bf16_flops_per_s=362.05 * TFLOPS,
         peak_fp16_flops_per_s=362.05 * TFLOPS, peak_tf32_flops_per_s=183 * TFLOPS,
         peak_fp32_flops_per_s=91.6 * TFLOPS, hbm_bytes_per_s=864 * GB, intra_node_link="PCIe4",
         intra_node_bytes_per_s=_PCIE4, inter_node_network="Ethernet 200 Gb/s",
         inter_node_bytes_per_s=25 * GB, host_link_bytes_per_s=_PCIE4, gpus_per_node=8,
         source="NVIDIA L40S datasheet"),
    # NVIDIA Ampere GA102 whitepaper, RTX 3090: 71 TF fp16/bf16 tensor with fp32 accumulate, 35.6 TF
    # tf32 and fp32, 936 GB/s GDDR6X; consumer boards talk over PCIe.
    _gpu(name="RTX3090", attention_efficiency=_FA2_AMPERE_ADA,
         sm_count=82, hbm_bytes=24576 * MiB, peak_bf16_flops_per_s=71 * TFLOPS,
         peak_fp16_flops_per_s=71 * TFLOPS, peak_tf32_flops_per_s=35.6 * TFLOPS,
         peak_fp32_flops_per_s=35.6 * TFLOPS, hbm_bytes_per_s=936 * GB, intra_node_link="PCIe4",
         intra_node_bytes_per_s=_PCIE4, inter_node_network="Ethernet 25 Gb/s",
         inter_node_bytes_per_s=25 / 8 / 8 * GB, host_link_bytes_per_s=_PCIE4, gpus_per_node=8,
         source="NVIDIA Ampere GA102 GPU architecture whitepaper"),
    # NVIDIA Ada GPU architecture whitepaper, RTX 4090: 165.2 TF fp16/bf16 tensor with fp32 accumulate,
    # 82.6 TF tf32 and fp32, 1008 GB/s GDDR6X; no NVLink, no P2P: collectives go through host memory.
    _gpu(name="RTX4090", attention_efficiency=_FA2_AMPERE_ADA,
         sm_count=128, hbm_bytes=24564 * MiB, peak_bf16_flops_per_s=165.2 * TFLOPS,
         peak_fp16_flops_per_s=165.2 * TFLOPS, peak_tf32_flops_per_s=82.6 * TFLOPS,
         peak_fp32_flops_per_s=82.6 * TFLOPS, hbm_bytes_per_s=1008 * GB, intra_node_link="PCIe4 (no P2P)",
         intra_node_bytes_per_s=_PCIE4 / 2, inter_node_network="Ethernet 25 Gb/s",
         inter_node_bytes_per_s=25 / 8 / 8 * GB, host_link_bytes_per_s=_PCIE4, gpus_per_node=8,
         source="NVIDIA Ada Lovelace GPU architecture whitepaper"),
    # NVIDIA T4 datasheet: 65 TF fp16 tensor (mixed), 8.1 TF fp32, 16 GB GDDR6 320 GB/s, PCIe3; no bf16. SDPA runs
    # the memory-efficient kernel: `_MEM_EFFICIENT_TURING`.
    _gpu(name="T4", sm_count=40, attention_efficiency=_MEM_EFFICIENT_TURING,
         hbm_bytes=15360 * MiB, peak_bf16_flops_per_s=0.0, peak_fp16_flops_per_s=65 * TFLOPS,
         peak_tf32_flops_per_s=8.1 * TFLOPS, peak_fp32_flops_per_s=8.1 * TFLOPS, hbm_bytes_per_s=320 * GB,
         intra_node_link="PCIe3", intra_node_bytes_per_s=_PCIE3, inter_node_network="Ethernet 25 Gb/s",
         inter_node_bytes_per_s=25 / 8 / 8 * GB, host_link_bytes_per_s=_PCIE3, gpus_per_node=8,
         source="NVIDIA T4 Tensor Core GPU datasheet"),
    # A CPU "device" for profiling and tests on machines without GPUs: ranks are processes over gloo with
    # one OpenMP thread each, device memory is host memory. The figures are per rank (one core): the median of
    # the 3 passes of `ftplan profile calibrate --device` (profiler/device_fit.py) that benchmarks/rank_order.py
    # --fit-each-round ran between its rounds on this project's 2-core x86 VM (AMD EPYC) on 2026-12-06
    # 19:39-19:47, nothing else running (benchmarks/measured/rank_order_s11e.json; profiler.device_fit.median_fit):
    # fp32 GEMM rate 147 GFLOP/s for large shapes with half rate at 25.3 rows (both processes timing at once),
    # narrow outputs (LoRA's r) at 0.18 / 0.37 / 0.67 / 0.74 of the row rate for n = 8 / 16 / 32 / 64, copy
    # bandwidth 11.9 GB/s, 1.80 us per eager op, dropout 135 M values/s, gloo all-reduce by size (points above;
    # its alpha-beta line 0.35 ms + M / 1.39 GB/s), a collective beside compute 1.27x its time alone, a
    # synchronous collective between compute 1.64 ms more than back to back, ZeRO-3 hooks 0.74 ms per module
    # and FSDP2 hooks 0.63 ms per unit (48-module probe); SDPA per computed score element (_CPU_SDPA_POINTS) and
    # the clip + AdamW step at 12.4 GB/s of its counted bytes (12.1 and 12.7 in two passes of measure_optimizer, the
    # copy 10.7 and 10.3 GB/s beside them; 2026-12-07 03:26); peft's lora.Linear 129 us per adapted linear and
    # micro-batch over its frozen base (126-133 us in three passes of measure_lora_host, 03:44; the count it replaces,
    # 8 ops x 3 passes at 1.8 us, was 43 us). Fits of this VM move: within 70 minutes the GEMM rate
    # read 102-150 GFLOP/s and the busy factor 1.1-1.8 (rank_order_s11{a..e}.json); `profile calibrate --device`
    # on the machine at hand replaces every figure. bf16 / fp16 matmuls run at 1/2 and 1/8 of fp32 on AVX2 cores
    # without AMX (oneDNN converts); there is no TF32. torch's CPU AdamW, the single-tensor loop, from the foreach
    # step's rate and host_op_s above by the ratios planner/torch_adamw.py measured beside them (the machine was
    # shared when they were taken, so the ratios, not its absolute times): 14.2 GB/s and 35 us per tensor.
    _gpu(name="CPU", hbm_bytes=24 * 2**30, peak_bf16_flops_per_s=73.6e9, peak_fp16_flops_per_s=18.4e9,
         peak_tf32_flops_per_s=147.2e9, peak_fp32_flops_per_s=147.2e9, hbm_bytes_per_s=11.9 * GB,
         intra_node_link="shared memory (gloo)", intra_node_bytes_per_s=1.39 * GB,
         inter_node_network="TCP (gloo)", inter_node_bytes_per_s=1.39 * GB, host_link_bytes_per_s=11.9 * GB,
         gpus_per_node=64, source="fitted: ftplan profile calibrate --device (profiler/device_fit.py)",
         runtime_overhead_bytes=0, allocator_reserve_fraction=0.0, host_op_s=1.80e-6, gemm_half_rate_rows=25.3,
         gemm_narrow_cols=((8, 0.18), (16, 0.37), (32, 0.67), (64, 0.74)),
         gemm_narrow_inner=((8, 0.19), (16, 0.38), (32, 0.63), (64, 0.62)), dropout_values_per_s=135e6,
         collective_alpha_s=0.349e-3, overlaps_comm=False, busy_comm_factor=1.27, sync_call_s=1.64e-3,
         zero3_module_host_s=0.744e-3, fsdp_unit_host_s=0.627e-3, allreduce_points=_CPU_ALLREDUCE_POINTS,
         allgather_points=_CPU_ALLGATHER_POINTS, reduce_scatter_points=_CPU_REDUCE_SCATTER_POINTS,
         sdpa_points=_CPU_SDPA_POINTS, optimizer_bytes_per_s=12.4 * GB, lora_linear_host_s=129e-6,
         adamw_single_tensor_bytes_per_s=12.4 * GB / SINGLE_OVER_FOREACH_TIME,
         adamw_single_tensor_s=SINGLE_TENSOR_HOST_OPS * 1.80e-6),
)}

_ALIASES = {"A100": "A100-80G", "RTX-4090": "RTX4090", "RTX-3090": "RTX3090", "4090": "RTX4090",
            "3090": "RTX3090", "V100": "V100-32G", "H100-80G": "H100"}


# `ftplan profile calibrate --device` keys -> GPUSpec fields. A CPU fit (profiler/device_fit.py) sets the CPU
# entry's constants; a CUDA fit (profiler/device_fit_cuda.py, "device": "cuda") adds gemm_efficiency,
# gemm_half_rate_inner and attention_efficiency, sets elementwise_bandwidth_fraction (against its measured copy rate)
# and replaces host_op_s, hbm_bytes_per_s, collective_alpha_s and intra_node_bytes_per_s of the GPU it names ("gpu").
DEVICE_FIT_FIELDS = {"host_op_s": "host_op_s", "peak_fp32_flops_per_s": "peak_fp32_flops_per_s",
                     "gemm_half_rate_rows": "gemm_half_rate_rows", "gemm_narrow_cols": "gemm_narrow_cols",
                     "gemm_narrow_inner": "gemm_narrow_inner",
                     "dropout_values_per_s": "dropout_values_per_s",
                     "hbm_bytes_per_s": "hbm_bytes_per_s", "collective_alpha_s": "collective_alpha_s",
                     "intra_node_bytes_per_s": "intra_node_bytes_per_s", "zero3_module_s": "zero3_module_host_s",
                     "fsdp_unit_s": "fsdp_unit_host_s", "busy_comm_factor": "busy_comm_factor",
                     "sync_call_s": "sync_call_s",
                     "allgather_points": "allgather_points", "reduce_scatter_points": "reduce_scatter_points",
                     "allreduce_points": "allreduce_points",
                     "gemm_efficiency": "gemm_efficiency", "gemm_half_rate_inner": "gemm_half_rate_inner",
                     "attention_efficiency": "attention_efficiency", "sdpa_points": "sdpa_points",
                     "optimizer_bytes_per_s": "optimizer_bytes_per_s", "lora_linear_host_s": "lora_linear_host_s",
                     "adamw_single_tensor_bytes_per_s": "adamw_single_tensor_bytes_per_s",
                     "adamw_single_tensor_s": "adamw_single_tensor_s",
                     "elementwise_bandwidth_fraction": "elementwise_bandwidth_fraction"}


def device_fit_gpu_name(fit: dict) -> str:
    """The catalog entry a device-fit file describes: "CPU" for a CPU fit (files without "device")."""
    return str(fit.get("gpu", "CPU")) if fit.get("device", "cpu") == "cuda" else "CPU"


def with_device_fit(gpu: GPUSpec, fit: dict) -> GPUSpec:
    """`gpu` with the constants of a `profile calibrate --device` file; keys an older file lacks keep the entry's
    values, except a CPU fit's single-tensor AdamW figures (see below). A CPU fit's fp32 matmuls run at the fitted rate
    (no TF32 on a CPU). A fit of another device than `gpu` is refused: its constants describe other hardware."""
    name = device_fit_gpu_name(fit)
    if name != gpu.name:
        raise PlanError(f"the device fit describes {name}, not {gpu.name}: plan for --gpus ...x{name}, or fit this "
                        f"machine with `ftplan profile calibrate --device`")
    values = {field: fit[key] for key, field in DEVICE_FIT_FIELDS.items() if key in fit and fit[key] is not None}
    for key in ("gemm_narrow_cols", "gemm_narrow_inner"):
        if key in values:
            values[key] = tuple((int(n), float(f)) for n, f in values[key])
    for key in ("allgather_points", "reduce_scatter_points", "allreduce_points"):
        if key in values:
            values[key] = tuple((float(b), float(t)) for b, t in values[key])
    if "sdpa_points" in values:
        values["sdpa_points"] = tuple(tuple(float(x) for x in p) for p in values["sdpa_points"])
    if "peak_fp32_flops_per_s" in values and name == "CPU":
        values["peak_tf32_flops_per_s"] = values["peak_fp32_flops_per_s"]
    if name == "CPU" and "adamw_single_tensor_bytes_per_s" not in values:
        # a CPU fit written before the single-tensor AdamW was measured: the step follows from that fit's own figures
        # (planner/torch_adamw.py: its foreach rate and host_op_s by the measured ratios), not the catalog's
        values.update(adamw_single_tensor_bytes_per_s=None, adamw_single_tensor_s=None)
    return replace(gpu, **values)


def cluster_with_device_fit(cluster: Cluster, fit: dict) -> Cluster:
    """The cluster with its GPU replaced by the device fit's constants (`with_device_fit`)."""
    return Cluster(gpu=with_device_fit(cluster.gpu, fit), nodes=cluster.nodes, gpus_per_node=cluster.gpus_per_node)


def gpu_from_name(name: str) -> GPUSpec:
    key = {k.upper(): k for k in GPUS}.get(name.upper()) or _ALIASES.get(name.upper())
    if key is None:
        raise unknown_name_error("GPU", name, list(GPUS))
    return GPUS[key]


@dataclass(frozen=True, kw_only=True)
class Cluster:
    gpu: GPUSpec
    nodes: int
    gpus_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def __str__(self) -> str:
        if self.nodes > 1:
            return f"{self.nodes}x{self.gpus_per_node}x{self.gpu.name}"
        return f"{self.gpus_per_node}x{self.gpu.name}"


_CLUSTER = re.compile(r"^(?:(\d+)x)?(?:(\d+)x)?([A-Za-z][\w.-]*)$")


def parse_gpus(text: str) -> Cluster:
    """`8xA800` (one node), `2x8xH100` (nodes x GPUs per node x type), `A100` (one GPU).

    More GPUs than one node of that type holds become whole nodes: `16xA800` is 2 nodes of 8."""
    match = _CLUSTER.match(text.strip())
    if not match:
        raise PlanError(f"--gpus '{text}' is malformed; write COUNTxTYPE or NODESxPER_NODExTYPE, e.g. 8xA800")
    first, second, name = match.groups()
    if any(n is not None and len(n) > 7 for n in (first, second)):  # int() of a 5,000-digit count raises
        raise PlanError(f"--gpus '{text[:40]}': GPU and node counts must be below 10,000,000")
    gpu = gpu_from_name(name)
    if second is not None:
        nodes, per_node = int(first), int(second)
    else:
        count = int(first) if first is not None else 1
        if count > gpu.gpus_per_node and count % gpu.gpus_per_node == 0:
            nodes, per_node = count // gpu.gpus_per_node, gpu.gpus_per_node
        elif count > gpu.gpus_per_node:
            raise PlanError(f"--gpus '{text}': {count} GPUs is not a whole number of "
                            f"{gpu.gpus_per_node}-GPU nodes; write NODESxPER_NODEx{gpu.name}")
        else:
            nodes, per_node = 1, count
    if nodes < 1 or per_node < 1:
        raise PlanError(f"--gpus '{text}': GPU and node counts must be at least 1")
    if per_node > gpu.gpus_per_node:
        raise PlanError(f"--gpus '{text}': a {gpu.name} node holds at most {gpu.gpus_per_node} GPUs")
    check_cluster_size(nodes, per_node, where=f"--gpus '{text}': ")
    return Cluster(gpu=gpu, nodes=nodes, gpus_per_node=per_node)
