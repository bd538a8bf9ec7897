"""Measure a CUDA machine for the time model: GEMM rate by shape, HBM bandwidth, FlashAttention, op dispatch, NCCL
collectives by size, and a short real step of a ~1B Llama per engine (validation in minutes).

`ftplan profile calibrate --device` runs this when torch sees a CUDA device (`select_device`), and the fitted
constants replace the GPU entry's (planner/gpus.py `with_device_fit`), so the first run on a GPU calibrates the
planner and checks it against real steps. What is measured and how it is fitted:
- GEMM: bf16 (fp16 on V100 / T4) (m x k) @ (k x n) timed with CUDA events, operands cycled through a pool larger than
  the L2 cache (a step streams every weight from HBM), for training shapes: k = n in {1024, 2048, 4096, 8192} and m
  from 256 to 16384 tokens. Each shape is timed twice: first as a burst (5 x max(pool, 8) products on a board that
  has not been held at load: near the boost clock, mamf-finder's MAMF regime), then, after the board has been held at
  full load until its clock settled, over a timed window (profiler/gemm_sustained.py: mamf-finder's MSMF, the rate a
  training step sustains). Each time is divided by the tile-wave quantization the planner applies (planner/kernels.py
  `wave_efficiency`), then fitted by least squares (relative residuals) to t x peak x waves / (2 m k n) = 1 / E + (k0
  / E) x 1 / k: E is the large-GEMM efficiency the planner's `compute_efficiency` takes (GPUSpec.gemm_efficiency), k0
  the inner size at which a tile's fixed prologue and epilogue halve its rate (GPUSpec.gemm_half_rate_inner). The
  sustained points set E and k0; the bursts' fit is written beside them (gemm_burst_efficiency) for information: on
  Hopper the burst reads about 13% above (planner/compute.py, H200 MAMF 843-850 against MSMF 743-746 TFLOP/s).
- HBM bandwidth: a 1 GiB device-to-device copy (read + write bytes over its time). The share of it eager
  elementwise ops reach on the bytes the planner counts for them (GPUSpec.elementwise_bandwidth_fraction): forward
  + backward of transformers' RMSNorm ops (fp32 upcast, pow, mean, rsqrt, the casts, the weight) on bf16
  8192 x 4096, ELEMENTWISE_PROBE_BYTES_PER_VALUE over its time and the copy rate.
- FlashAttention: torch's SDPA, causal, bf16, forward + backward at 2048-8192 tokens and the model's head shape;
  its FLOPs (the causal blocks, 3.5 x the forward's: planner/kernels.py) over time and peak, divided by the waves
  of its 128-row blocks: GPUSpec.attention_efficiency.
- host_op_s: the median host time of a 1-element CUDA `torch.add` without synchronizing (python, dispatcher and
  kernel launch: what an eager op costs the host while the device runs ahead).
- NCCL: all-reduce, all-gather and reduce-scatter on all local GPUs for 64 KiB to 1 GiB, fitted per collective to
  t = alpha + M x f / B with nccl-tests' bus factors f (all-reduce 2(n-1)/n, the others (n-1)/n, doc/PERFORMANCE.md):
  B is the bus bandwidth per GPU (GPUSpec.intra_node_bytes_per_s, over the planner's link efficiency), alpha the
  fixed cost of a call.
- Real steps: a Llama 3.2 1B (built from its config, no download) for a few optimizer steps per engine (DDP,
  ZeRO-2, ZeRO-3, FSDP) through profiler.launch, predicted by the planner with the fitted constants: the measured /
  predicted table validates the fit on this machine.
The fits are pure functions over (shape, seconds) points, tested without a GPU (tests/profiler/test_device_fit_cuda.py).
"""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from planner.comm import DEFAULT_COMM_EFFICIENCY
from planner.errors import PlanError
from planner.gpus import GPUS, GPUSpec
from planner.kernels import FLASH_BACKWARD_OVER_FORWARD, FLASH_BLOCK_ROWS, causal_block_share, wave_efficiency
from profiler.fit_helpers import _line_fit
from profiler.gemm_sustained import SustainedPhase, board_readings, measure_window, settle

GemmPoints = tuple[tuple[int, int, int, float], ...]  # (m, k, n, seconds)
SizePoints = tuple[tuple[int, float], ...]  # (bytes, seconds)

GEMM_SIDES = (1024, 2048, 4096, 8192)
GEMM_ROWS = (256, 1024, 4096, 16384)
ATTENTION_SEQS = (2048, 4096, 8192)
COLLECTIVE_SIZES = tuple(2**k for k in range(16, 31, 2))  # 64 KiB .. 1 GiB
L2_POOL_BYTES = 256 * 2**20  # several times an H100's 50 MB L2
# mamf-finder's MAMF bursts each start "after 0.25s of idle so the SM clock climbs back to boost"
# (stas00/ml-engineering compute/accelerator/benchmarks/README.md, "How MAMF and MSMF are defined")
BURST_IDLE_S = 0.25
# Bytes per value the elementwise probe's ops read and write, forward + backward, as a dispatch mode counts them
# (tests/profiler/test_device_fit_cuda.py counts `rmsnorm_probe` on the CPU): 36 forward, 96 backward.
ELEMENTWISE_PROBE_BYTES_PER_VALUE = 132.0
ELEMENTWISE_PROBE_SHAPE = (8192, 4096)
BUS_FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
              "reduce_scatter": lambda n: (n - 1) / n}
STEP_ENGINES = (("ddp", {}), ("zero2", {"zero": 2}), ("zero3", {"zero": 3}), ("fsdp", {"fsdp": "full_shard"}))


def step_engines(deepspeed_available: bool) -> tuple[tuple[str, dict[str, Any]], ...]:
    """The engines the real steps run: STEP_ENGINES, less ZeRO where deepspeed is not installed (one torchrun runs
    them all, and a rank that cannot import deepspeed would fail every engine's steps)."""
    return tuple((label, kw) for label, kw in STEP_ENGINES if deepspeed_available or "zero" not in kw)


def select_device(requested: str, cuda_available: bool) -> str:
    """"cuda" or "cpu" for `--device` (auto: CUDA when torch sees one); asking for CUDA without one is an error."""
    if requested not in ("auto", "cuda", "cpu"):
        raise PlanError(f"device must be auto, cuda or cpu, got {requested!r}")
    if requested == "cuda" and not cuda_available:
        raise PlanError("no CUDA device is visible to torch (CUDA_VISIBLE_DEVICES, driver): calibrate the CPU with "
                        "--device cpu, or run on the GPU machine")
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    return requested


# torch.cuda.get_device_name() substrings -> catalog names; memory picks between an entry's variants
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("H200", "H200"), ("H800", "H800"), ("H100", "H100"), ("A800", "A800"), ("A100", "A100"), ("V100", "V100-32G"),
    ("A10G", "A10G"), ("L40S", "L40S"), ("4090", "RTX4090"), ("3090", "RTX3090"), ("T4", "T4"))


def catalog_gpu_name(device_name: str, total_memory_bytes: int) -> str:
    """The planner's GPU entry for a CUDA device name ("NVIDIA A100-SXM4-80GB" -> "A100-80G"); PlanError naming the
    device when no entry matches, so the user can pick one (--gpus) instead of a silent guess."""
    upper = device_name.upper()
    for hint, name in _NAME_HINTS:
        if hint in upper:
            if name == "A100":
                return "A100-80G" if total_memory_bytes > 48 * 2**30 else "A100-40G"
            return name
    raise PlanError(f"CUDA device {device_name!r} has no entry in the GPU catalog ({', '.join(GPUS)}); the fit "
                    f"needs its datasheet peak")


def fit_gemm(points: GemmPoints, peak_flops_per_s: float, sm_count: int) -> tuple[float, float]:
    """(E, k0) from GEMM timings: t x peak x waves / (2mkn) = 1/E + (k0/E) / k (least squares on relative
    residuals), waves the planner's tile-wave efficiency of the shape. E is capped at 1."""
    xs, ys = [], []
    for m, k, n, t in points:
        waves = wave_efficiency(m, n, sm_count)
        xs.append(1.0 / k)
        ys.append(t * peak_flops_per_s * waves / (2.0 * m * k * n))
    slope, intercept = _line_fit(xs, ys)
    eff = min(1.0, 1.0 / intercept) if intercept > 0 else 1.0
    return eff, max(0.0, slope * eff)


def fit_attention(points: Sequence[tuple[int, int, int, int, float]], peak_flops_per_s: float,
                  sm_count: int) -> float:
    """Attention efficiency from (batch, heads, seq, head_dim, seconds of forward + backward) of causal SDPA: the
    median over the points of the causal blocks' FLOPs (forward 4 s^2 d per head x the causal share, backward 2.5x)
    over time x peak x the waves of its 128-row blocks (planner/kernels.py flash_attention_s)."""
    effs = []
    for b, heads, s, d, t in points:
        flops = b * heads * 4.0 * s * s * d * causal_block_share(s) * (1.0 + FLASH_BACKWARD_OVER_FORWARD)
        tiles = b * heads * math.ceil(s / FLASH_BLOCK_ROWS)
        waves = tiles / (math.ceil(tiles / sm_count) * sm_count) if sm_count > 0 else 1.0
        effs.append(flops / (t * peak_flops_per_s * waves))
    return min(1.0, statistics.median(effs))


def fit_collective(points: SizePoints, n: int, kind: str) -> tuple[float, float]:
    """(alpha seconds per call, bus bytes/s per GPU) from (message bytes, seconds): t = alpha + M f(n) / B. B from
    the three largest messages (plain least squares where bytes dominate), alpha the median of t - M f / B over the
    four smallest."""
    f = BUS_FACTOR[kind](n)
    ordered = sorted(points)
    big = ordered[-3:]
    mx = statistics.fmean(m * f for m, _ in big)
    my = statistics.fmean(t for _, t in big)
    sxx = sum((m * f - mx) ** 2 for m, _ in big)
    slope = sum((m * f - mx) * (t - my) for m, t in big) / sxx if sxx > 0 else my / mx
    bus = 1.0 / max(slope, 1e-15)
    alpha = statistics.median(t - m * f / bus for m, t in ordered[:4])
    return max(1e-7, alpha), bus


@dataclass(frozen=True, kw_only=True, slots=True)
class CudaDeviceFit:
    device: str  # "cuda"
    gpu: str  # the catalog entry the constants replace
    device_name: str  # torch.cuda.get_device_name()
    gpus: int  # local GPUs the collectives ran on
    host_op_s: float
    gemm_efficiency: float
    gemm_half_rate_inner: float
    hbm_bytes_per_s: float
    elementwise_bandwidth_fraction: float
    attention_efficiency: float
    collective_alpha_s: float | None  # as a 2-rank call (parallel_comm.py hop_alpha_s halves it); None: one GPU
    intra_node_bytes_per_s: float  # nominal: the fitted bus bandwidth over the planner's link efficiency
    collectives: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> alpha_s, bus_bytes_per_s
    gemm_points: GemmPoints = ()
    attention_points: tuple[tuple[int, int, int, int, float], ...] = ()
    collective_points: dict[str, SizePoints] = field(default_factory=dict)
    steps: tuple[dict[str, Any], ...] = ()  # per engine: plan, measured_s, predicted_s, error
    steps_error: str | None = None  # why the real steps failed (the fit's constants stand without them)
    # Since the sustained phase (files without these keys timed bursts only, and gemm_points were the bursts):
    # gemm_points above are the sustained windows' points that gemm_efficiency / gemm_half_rate_inner are fitted
    # from; the bursts' points and fit are kept for information, with each window's steadiness, the board's clock,
    # power, utilization and temperature where torch can read them (None where not), and the settle phase.
    gemm_timing: str = "sustained"  # "sustained": gemm_efficiency is the settled-board rate
    gemm_burst_efficiency: float | None = None
    gemm_burst_half_rate_inner: float | None = None
    gemm_burst_points: GemmPoints = ()
    gemm_windows: tuple[dict[str, Any], ...] = ()
    gemm_settle: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_elementwise(probe_s: float, copy_bytes_per_s: float, values: int = math.prod(ELEMENTWISE_PROBE_SHAPE)) -> float:
    """The share of the copy rate the elementwise probe reaches on its counted bytes."""
    return ELEMENTWISE_PROBE_BYTES_PER_VALUE * values / probe_s / copy_bytes_per_s


def constants_from(gpu: GPUSpec, *, gemm: GemmPoints, attention: Sequence[tuple[int, int, int, int, float]],
                   copy_bytes_per_s: float, host_op_s: float, collectives: dict[str, SizePoints],
                   n: int, elementwise_s: float | None = None, gemm_bursts: GemmPoints = ()) -> dict[str, Any]:
    """Every fitted constant from the raw points (no torch): the part of a CUDA fit the tests check. `gemm` are the
    sustained points (they set gemm_efficiency), `gemm_bursts` the bursts (fitted apart, for information). Without
    the elementwise probe's time the catalog's share is carried over to the copy rate's scale."""
    peak = gpu.peak_bf16_flops_per_s or gpu.peak_fp16_flops_per_s
    eff, k0 = fit_gemm(gemm, peak, gpu.sm_count)
    burst_eff, burst_k0 = fit_gemm(gemm_bursts, peak, gpu.sm_count) if len(gemm_bursts) >= 2 else (None, None)
    fitted = {kind: fit_collective(pts, n, kind) for kind, pts in collectives.items() if len(pts) >= 4}
    share = fit_elementwise(elementwise_s, copy_bytes_per_s) if elementwise_s else \
        gpu.elementwise_bytes_per_s / copy_bytes_per_s
    out: dict[str, Any] = {"gemm_efficiency": eff, "gemm_half_rate_inner": k0, "gemm_burst_efficiency": burst_eff,
                           "gemm_burst_half_rate_inner": burst_k0, "hbm_bytes_per_s": copy_bytes_per_s,
                           "elementwise_bandwidth_fraction": share,
                           "attention_efficiency": fit_attention(attention, peak, gpu.sm_count) if attention else
                           gpu.attention_efficiency, "host_op_s": host_op_s,
                           "collectives": {k: {"alpha_s": a, "bus_bytes_per_s": b} for k, (a, b) in fitted.items()}}
    if "all_reduce" in fitted and n > 1:
        alpha, bus = fitted["all_reduce"]
        # the planner's ring alpha is per hop (2(n-1) hops per all-reduce); a device's collective_alpha_s is read as
        # a 2-rank call of 2 hops
        out["collective_alpha_s"] = 2.0 * alpha / (2 * (n - 1))
        out["intra_node_bytes_per_s"] = bus / DEFAULT_COMM_EFFICIENCY
    else:
        # nothing measured on one GPU: None keeps NCCL's per-hop alphas (planner/parallel_comm.py hop_alpha_s), where
        # a 0 would make every collective of a multi-GPU plan read with this fit free of latency
        out["collective_alpha_s"] = gpu.collective_alpha_s
        out["intra_node_bytes_per_s"] = gpu.intra_node_bytes_per_s
    return out


# ------------------------------------------------------------------------------------ measurements (CUDA only)

def _events_time_s(torch: Any, fn: Any, repeats: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gemm_dtype(torch: Any, gpu: GPUSpec) -> Any:
    """The 16-bit type whose tensor-core peak the GEMM fit divides by (constants_from): bf16, or fp16 on the boards
    without bf16 tensor cores (V100, T4), where cuBLAS has no bf16 tensor-core GEMM."""
    return torch.bfloat16 if gpu.peak_bf16_flops_per_s > 0 else torch.float16


def _gemm_operands(torch: Any, m: int, kn: int, dtype: Any) -> tuple[Callable[[int], None], int]:
    """`run(n)`: n 16-bit (m x kn) @ (kn x kn) products cycling through a pool of operands larger than the L2 cache
    (a step streams every weight from HBM); and the pool's size."""
    size = (m * kn + kn * kn) * 2
    pool = max(1, min(64, math.ceil(L2_POOL_BYTES / size)))
    xs = [torch.randn(m, kn, device="cuda", dtype=dtype) for _ in range(pool)]
    ws = [torch.randn(kn, kn, device="cuda", dtype=dtype) for _ in range(pool)]

    def run(n: int) -> None:
        for i in range(n):
            torch.mm(xs[i % pool], ws[i % pool])

    return run, pool


def gemm_shapes() -> tuple[tuple[int, int], ...]:
    """(m, k = n) of the fit's GEMMs."""
    return tuple((m, kn) for kn in GEMM_SIDES for m in GEMM_ROWS)


def measure_gemm_bursts(torch: Any, dtype: Any, idle_s: float = BURST_IDLE_S,
                        sleep: Callable[[float], None] = time.sleep) -> GemmPoints:
    """Each shape after `idle_s` of idle: the median of 5 bursts of max(pool, 8) products, near the boost clock
    (for information beside the sustained rate: mamf-finder's MAMF regime)."""
    points = []
    for m, kn in gemm_shapes():
        run, pool = _gemm_operands(torch, m, kn, dtype)
        inner = max(pool, 8)
        torch.cuda.synchronize()
        sleep(idle_s)
        run(inner)
        points.append((m, kn, kn, _events_time_s(torch, lambda run=run, inner=inner: run(inner), 5) / inner))
        del run
    return tuple(points)


def measure_gemms_sustained(torch: Any, bursts: GemmPoints, phase: SustainedPhase, dtype: Any) -> dict[str, Any]:
    """The settle phase, then every shape's timed window (profiler/gemm_sustained.py): the points the fit takes,
    each window's steadiness and the board readings after it."""
    settled = settle(torch, phase, dtype)
    points, windows = [], []
    for m, k, n, burst_s in bursts:
        run, _ = _gemm_operands(torch, m, k, dtype)
        w = measure_window(torch, run, burst_s, phase)
        points.append((m, k, n, w.seconds_per_iteration))
        windows.append({"m": m, "k": k, "n": n, "drop": w.drop, "spread": w.spread, "steady": w.steady,
                        "sub_rates": list(w.sub_rates), **board_readings(torch)})
        del run
    return {"points": tuple(points), "windows": tuple(windows), "settle": settled}


def measure_bandwidth(torch: Any) -> float:
    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = _events_time_s(torch, lambda: dst.copy_(src), 10)
    return 2 * src.numel() * 2 / t


def rmsnorm_probe(torch: Any, x: Any, weight: Any, eps: float = 1e-6) -> Any:
    """transformers' LlamaRMSNorm.forward, op for op (modeling_llama.py)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def measure_elementwise(torch: Any) -> float:
    m, n = ELEMENTWISE_PROBE_SHAPE
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.ones(n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        rmsnorm_probe(torch, x, weight).backward(dy)

    step()
    return _events_time_s(torch, step, 10)


def measure_attention(torch: Any, heads: int = 32, head_dim: int = 128) -> tuple[tuple[int, int, int, int, float], ...]:
    import torch.nn.functional as F

    points = []
    for s in ATTENTION_SEQS:
        b = max(1, 8192 // s)
        q, k, v = (torch.randn(b, heads, s, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))

        def step(q: Any = q, k: Any = k, v: Any = v) -> None:
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        step()
        points.append((b, heads, s, head_dim, _events_time_s(torch, step, 5)))
    return tuple(points)


def measure_host_op_s(torch: Any) -> float:
    a = torch.ones(1, device="cuda")
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(200):  # fewer than the launch queue holds, so the host never waits on the device
            torch.add(a, a)
        times.append((time.perf_counter() - t0) / 200)
        torch.cuda.synchronize()
    return statistics.median(times)


def _collective_rank(rank: int, port: int, out: Any, *, n: int) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=n)
    results: dict[str, list[tuple[int, float]]] = {k: [] for k in BUS_FACTOR}
    for size in COLLECTIVE_SIZES:
        elems = max(n, size // 2 // n * n)
        full = torch.ones(elems, dtype=torch.bfloat16, device="cuda")
        shard = torch.ones(elems // n, dtype=torch.bfloat16, device="cuda")
        calls = {"all_reduce": lambda full=full: dist.all_reduce(full),
                 "all_gather": lambda full=full, shard=shard: dist.all_gather_into_tensor(full, shard),
                 "reduce_scatter": lambda full=full, shard=shard: dist.reduce_scatter_tensor(shard, full)}
        for kind, call in calls.items():
            call()
            dist.barrier()
            results[kind].append((elems * 2, _events_time_s(torch, call, 9)))
    if rank == 0:
        out.put(results)
    dist.barrier()
    dist.destroy_process_group()


def measure_collectives(n: int) -> dict[str, SizePoints]:
    if n < 2:
        return {}
    from functools import partial

    from profiler.fit_helpers import _on_ranks

    got = _on_ranks(partial(_collective_rank, n=n), n, answers=1)[0]
    return {k: tuple(v) for k, v in got.items()}


def measure_steps(gpu: GPUSpec, n: int, fitted: dict[str, Any], steps: int = 3) -> tuple[dict[str, Any], ...]:
    """A few real optimizer steps of Llama 3.2 1B per engine on the local GPUs, beside the planner's prediction with
    the fitted constants (planner/gpus.py with_device_fit)."""
    from dataclasses import replace

    from planner.build import build_config
    from planner.gpus import with_device_fit
    from planner.strategy import FsdpStrategy, Method, Precision
    from planner.timing import step_time
    from profiler.launch import launch_many

    fitted_gpu = with_device_fit(gpu, {**fitted, "device": "cuda", "gpu": gpu.name})
    out = []
    cfgs = []
    for label, kw in step_engines(importlib.util.find_spec("deepspeed") is not None):
        kw = {k: (FsdpStrategy(v) if k == "fsdp" else v) for k, v in kw.items()}
        cfg = build_config(model="llama-3.2-1b", gpus=f"{n}x{gpu.name}", method=Method.full,
                           precision=Precision.bf16_mixed, micro_batch=2, grad_accum=1, seq_len=1024, check=False, **kw)
        cfgs.append((label, cfg))
    results = launch_many([c for _, c in cfgs], warmup_steps=2, steps=steps)
    for (label, cfg), res in zip(cfgs, results, strict=True):
        predicted = step_time(replace(cfg, cluster=replace(cfg.cluster, gpu=fitted_gpu))).step_time_s
        out.append({"engine": label, "plan": str(cfg), "measured_s": res.step_time_s, "predicted_s": predicted,
                    "error": predicted / res.step_time_s - 1.0})
    return tuple(out)


def fit_cuda_device(*, real_steps: bool = True, phase: SustainedPhase | None = None) -> CudaDeviceFit:
    """Measure this CUDA machine. `phase` sets the sustained GEMM phase's durations (default: mamf-finder's MSMF
    settle and window, at most SustainedPhase.added_s(16) = 68 s on top of the rest)."""
    import torch

    phase = phase or SustainedPhase()
    name = torch.cuda.get_device_name()
    gpu = GPUS[catalog_gpu_name(name, torch.cuda.get_device_properties(0).total_memory)]
    n = torch.cuda.device_count()
    readings = board_readings(torch)
    dtype = gemm_dtype(torch, gpu)
    bursts = measure_gemm_bursts(torch, dtype)
    sustained = measure_gemms_sustained(torch, bursts, phase, dtype)
    attention = measure_attention(torch)
    bandwidth = measure_bandwidth(torch)
    elementwise = measure_elementwise(torch)
    host = measure_host_op_s(torch)
    collectives = measure_collectives(n)
    fitted = constants_from(gpu, gemm=sustained["points"], attention=attention, copy_bytes_per_s=bandwidth,
                            host_op_s=host, collectives=collectives, n=n, elementwise_s=elementwise,
                            gemm_bursts=bursts)
    steps, steps_error = (), None
    if real_steps:
        try:
            steps = measure_steps(gpu, n, fitted)
        except PlanError as exc:  # a failed step run (torchrun's cause) must not lose the minutes of measurement
            steps_error = str(exc)[:200]
    return CudaDeviceFit(device="cuda", gpu=gpu.name, device_name=name, gpus=n, host_op_s=host,
                         gemm_efficiency=fitted["gemm_efficiency"], gemm_half_rate_inner=fitted["gemm_half_rate_inner"],
                         hbm_bytes_per_s=bandwidth,
                         elementwise_bandwidth_fraction=fitted["elementwise_bandwidth_fraction"],
                         attention_efficiency=fitted["attention_efficiency"],
                         collective_alpha_s=fitted["collective_alpha_s"],
                         intra_node_bytes_per_s=fitted["intra_node_bytes_per_s"], collectives=fitted["collectives"],
                         gemm_points=sustained["points"], attention_points=attention, collective_points=collectives,
                         steps=steps, steps_error=steps_error, gemm_burst_efficiency=fitted["gemm_burst_efficiency"],
                         gemm_burst_half_rate_inner=fitted["gemm_burst_half_rate_inner"], gemm_burst_points=bursts,
                         gemm_windows=sustained["windows"],
                         gemm_settle={**sustained["settle"], "before_fit": readings})
