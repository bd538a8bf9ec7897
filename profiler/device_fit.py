"""Measure the CPU "device" the planner predicts: GEMM rate vs size, memory bandwidth, op dispatch, gloo.

`ftplan profile calibrate --device` runs this and prints the fitted constants that planner/gpus.py ships
as the CPU entry's defaults. One rank of `--gpus NxCPU` is one process with one OpenMP thread
(profiler/launch.py sets OMP_NUM_THREADS=1), so every figure is per core:
- host_op_s: median time of a 1-element `torch.add` (python + dispatcher + kernel call);
- GEMM: fp32 (m x k) @ (k x n), timed on two processes at once (a step's ranks share the socket's cache
  and memory; per shape the slower process counts) with cold operands (cycled through a pool larger than
  the last-level cache), for k = n in {256, 512, 1024} and m from 16 to 1024 tokens; fitted by least
  squares to t / (2kn) = (m + m0) / R (planner/kernels.py: a fixed weight-packing cost per call on top
  of 2mkn / R), giving the large-GEMM rate R (the CPU's fp32 peak) and the half-rate rows m0; then
  LoRA's narrow outputs at 512 rows (n = 8, 16, 32, 64 for k = 384, 640, 1024): per n the median share
  of the row rate R m/(m+m0) reached (`gemm_narrow_cols`); and LoRA's narrow inner dimension (B's forward x' A B
  and A's input gradient: k = r = 8 ... 64 for n = 384, 640, 1024 at 512 rows), each writing its output to memory
  no earlier call touched (a pool of outputs, `out=`), as a step writes every activation to fresh memory: with so
  little arithmetic per output value the write is the cost (measured here, two processes at once: 512 x 8 x 384
  took 0.061 ms writing into the call before's output, 0.132 ms into a cold one, and 0.131 ms per call inside a
  profiled LoRA step of benchmarks/rank_order.py; the wide shapes moved within noise): per k the median share of
  the row rate (`gemm_narrow_inner`);
- dropout: values per second of a training-mode `torch.nn.functional.dropout(p=0.05)` of 1 Mi values
  (the RNG draws one value per element; peft's LoRA dropout);
- memory bandwidth: a 64 MiB fp32 copy (read + write bytes over its time) on two processes at once, the slower
  counting: a step's ranks share the memory bus, so each gets less than one process alone (`hbm_bytes_per_s`, the
  rate of the time model's elementwise traffic, planner/kernels.py);
- gloo: all-reduce between 2 local processes for 4 KiB to 16 MiB (2^k and 3 x 2^k), fitted to t = alpha + M / B (for
  2 ranks the ring all-reduce moves M per rank, nccl-tests' factor 2(n-1)/n = 1): B from the largest messages,
  alpha from the four smallest; the points themselves are kept, and the planner interpolates them (gloo's time
  is not one line in the size);
- gloo all-gather and reduce-scatter (all_gather_into_tensor / reduce_scatter_tensor: ZeRO-1/2's one gather of
  the updated partitions, ZeRO-3's and FSDP's gathers and gradient reductions) between the same 2 processes at
  full (gathered / reduced) sizes of 256 KiB to 64 MiB, kept as measured points that the planner interpolates
  (planner/comm.py measured_collective_s): gloo does not run them as the ring halves of its all-reduce (they took
  1-5x the all-reduce of the same full size here), and their time jumps at 32 MiB (GATHER_SIZES), so neither a
  ring model of the all-reduce's fit nor one alpha-beta line describes them;
- busy collectives: DDP over a stack of 24 Linear(1024, 1024) (100 MB of fp32 gradients, 25 MB buckets)
  on 2 ranks: (backward with gradient all-reduce - the same backward under `no_sync`) / one all-reduce of
  the same bytes alone, medians of 9 interleaved repeats: what a collective issued from backward hooks
  costs while both ranks compute, relative to the same collective alone; and the same backward with a
  synchronous all-reduce of each gradient from its post-accumulate hook (ZeRO-1/2's bucket all-reduce, FSDP's
  and ZeRO-3's synchronous collectives between modules; the layers without biases, so that a call follows each
  layer's compute), less the backward without them and less those all-reduces back to back, per call
  (`sync_call_s`): a rank that arrives first waits for the other, and a
  blocked rank's threads wake on busy cores. Timed inside a ZeRO-2 step of the benchmark model, such calls took
  about 2 ms more each than back to back at every size (1.5 KB: 3.2 against 0.45 ms; 576 KB: 2.6 against 1.0;
  1.5 MB: 4.4 against 2.5), an additive cost per call, not a factor;
- sharding hooks: forward + backward of 48 tiny Linear(8, 8) modules under DeepSpeed ZeRO-3 and under
  FSDP2 (one unit per module), both on one gloo rank, minus the same model unwrapped, per module: the
  host work of fetching, releasing and reducing one module's parameters (DeepSpeed's
  pre/post-submodule hooks, partitioned_param_coordinator.fetch_sub_module / release_sub_module;
  FSDP2's pre/post-forward and backward hooks), where its data movement is negligible.
- SDPA: the causal fp32 CPU flash kernel's forward and backward at 128-2048 tokens and head sizes 64 and 128, both
  processes at once, per computed score element (planner/kernels.py cpu_flash_computed_scores: whole key blocks up
  to the last visible key), the shapes taking turns within each repeat (`sdpa_points`);
- the optimizer: clip_grad_norm_ + torch.optim.AdamW(foreach=True) over 24 x 1 Mi parameters on both processes at
  once, as the counted bytes (planner/timing.py) per second (`optimizer_bytes_per_s`): in-place updates skip the
  write-allocate read a copy pays, so the step moves its bytes faster than the copy that sets hbm_bytes_per_s;
  then the same step with torch's CPU default, the single-tensor loop (planner/torch_adamw.py), over 24 x 1 Mi
  and 384 x 64 parameters (SINGLE_TENSOR_SHAPES), fitted (least squares on relative residuals) to
  t = tensors x c + bytes / R
  (`adamw_single_tensor_s` c, `adamw_single_tensor_bytes_per_s` R): the large tensors set the rate, the tiny ones
  the loop's host work per tensor;
- peft's host work per adapted linear: forward + backward of 48 tiny frozen Linear(8, 8) with and without LoRA
  (r 8, dropout 0.05), one process, per adapted linear (`lora_linear_host_s`).
Least squares on times measured in one run; medians of repeats damp a shared machine's noise, not remove it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from profiler.fit_helpers import _line_fit, _median_time, _on_ranks

Points = tuple[tuple[int, int, int, float], ...]  # (m, k, n, seconds)
SizePoints = tuple[tuple[int, float], ...]  # (bytes, seconds)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceFit:
    host_op_s: float
    peak_fp32_flops_per_s: float
    gemm_half_rate_rows: float
    gemm_narrow_cols: tuple[tuple[int, float], ...]
    dropout_values_per_s: float
    gemm_narrow_inner: tuple[tuple[int, float], ...] = ()  # (k, share): LoRA's k = r GEMMs, cold outputs
    hbm_bytes_per_s: float
    collective_alpha_s: float
    intra_node_bytes_per_s: float
    zero3_module_s: float  # host work per ZeRO-3 module and micro-batch (forward + backward)
    fsdp_unit_s: float  # the same per FSDP unit
    busy_comm_factor: float  # a collective issued while the ranks compute / the same collective alone
    gemm_points: tuple[tuple[int, int, int, float], ...]  # (m, k, n, seconds)
    allreduce_points: tuple[tuple[int, float], ...]  # (bytes, seconds)
    allgather_points: tuple[tuple[int, float], ...] = ()  # (gathered bytes, seconds) of all_gather_into_tensor
    reduce_scatter_points: tuple[tuple[int, float], ...] = ()  # (reduced bytes, seconds) of reduce_scatter_tensor
    sync_call_s: float = 0.0  # a synchronous collective between the ranks' compute, over the same call back to back
    # (length, head size, forward s, backward s) per computed score element of SDPA's causal CPU flash kernel
    sdpa_points: tuple[tuple[int, int, float, float], ...] = ()
    optimizer_bytes_per_s: float = 0.0  # AdamW (foreach) + clip_grad_norm_: counted bytes per second; 0: not measured
    # AdamW single-tensor (torch's CPU default) + clip_grad_norm_: (tensors, values per tensor, seconds) measured, and
    # the counted bytes per second and seconds per tensor fitted to them; 0 / (): not measured
    adamw_single_tensor_points: tuple[tuple[int, int, float], ...] = ()
    adamw_single_tensor_bytes_per_s: float = 0.0
    adamw_single_tensor_s: float = 0.0
    lora_linear_host_s: float = 0.0  # peft's host work per adapted linear and micro-batch (fwd + bwd); 0: not measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_host_op_s() -> float:
    import torch

    a, b = torch.ones(1), torch.ones(1)
    return _median_time(lambda: torch.add(a, b), repeats=7, inner=2000)


SQUARE_SIDES = (256, 512, 1024)
SQUARE_ROWS = (16, 32, 64, 128, 256, 512, 1024)


def gemm_shapes() -> list[tuple[int, int, int]]:
    """(m, k, n) of the fitted GEMMs: square weights at 16-1024 rows, then LoRA's narrow outputs."""
    return ([(m, kn, kn) for kn in SQUARE_SIDES for m in SQUARE_ROWS] +
            [(NARROW_ROWS, k, n) for n in NARROW_COLS for k in NARROW_INNER])


def narrow_inner_shapes() -> list[tuple[int, int, int]]:
    """(m, k, n) of LoRA's k = r GEMMs (lora_B's forward, lora_A's input gradient), timed into cold outputs."""
    return [(NARROW_ROWS, k, n) for k in NARROW_COLS for n in NARROW_INNER]


def _gemm_rank(rank: int, port: int, out: Any) -> None:
    """One of two processes timing every shape at once with the other, as the ranks of a step share the
    socket's cache and memory; reports (rank, host_op_s, [(m, k, n, seconds)])."""
    import torch

    torch.set_num_threads(1)
    host = measure_host_op_s()
    points = [(m, k, n, _gemm_s(torch, m, k, n)) for m, k, n in gemm_shapes()]
    points += [(m, k, n, _gemm_s(torch, m, k, n, cold_output=True)) for m, k, n in narrow_inner_shapes()]
    out.put((rank, host, points))


def fit_gemm_curve(points: Points, host_op_s: float) -> tuple[float, float]:
    """(R, m0) from the square points: t / (2kn) = m / R + m0 / R (least squares on relative residuals)."""
    square = [(m, k, n, t) for m, k, n, t in points if k == n]
    slope, intercept = _line_fit([float(m) for m, _, _, _ in square],
                                 [max(t - host_op_s, 1e-9) / (2 * k * n) for _, k, n, t in square])
    rate = 1.0 / slope
    return rate, max(0.0, intercept * rate)


def fit_narrow(points: Points, rate: float, m0: float, host_op_s: float) -> tuple[tuple[int, float], ...]:
    """(n, share) for LoRA's narrow outputs: a point's share of the row rate R m/(m+m0) is 2mkn / rate / t,
    capped at 1; per n the median over k."""
    return _narrow_table(points, rate, m0, host_op_s, inner=False)


def fit_narrow_inner(points: Points, rate: float, m0: float, host_op_s: float) -> tuple[tuple[int, float], ...]:
    """(k, share) for LoRA's narrow inner dimension (k = r): per k the median over n of a point's share of the row
    rate R m/(m+m0), capped at 1; () where the points lack them (a fit made before they were measured)."""
    return _narrow_table(points, rate, m0, host_op_s, inner=True)


def _narrow_table(points: Points, rate: float, m0: float, host_op_s: float, *,
                  inner: bool) -> tuple[tuple[int, float], ...]:
    """Per narrow size (NARROW_COLS) of the output (`inner` False: n) or of the inner dimension (`inner` True: k),
    the median over the other, wide one (NARROW_INNER) of the 512-row points' shares of the row rate; sizes without
    points are left out."""
    shares: dict[int, list[float]] = {}
    for m, k, n, t in points:
        narrow, wide = (k, n) if inner else (n, k)
        if m == NARROW_ROWS and narrow in NARROW_COLS and wide in NARROW_INNER:
            shares.setdefault(narrow, []).append(rate_share(2.0 * m * k * n, rate * m / (m + m0),
                                                            max(t - host_op_s, 1e-9)))
    return tuple((size, statistics.median(shares[size])) for size in NARROW_COLS if size in shares)


def measure_gemms() -> tuple[float, Points]:
    """(host_op_s, points): every shape timed on two processes at once; per shape the slower one, since a
    step waits for its slowest rank."""
    answers = _on_ranks(_gemm_rank, 2)
    host = max(h for _, h, _ in answers)
    per_rank = [pts for _, _, pts in answers]
    points = tuple((m, k, n, max(r[i][3] for r in per_rank)) for i, (m, k, n, _) in enumerate(per_rank[0]))
    return host, points


COLD_POOL_BYTES = 64 * 2**20  # more than a server CPU's last-level cache share


def _gemm_s(torch: Any, m: int, k: int, n: int, cold_output: bool = False) -> float:
    """Median time of one (m x k) @ (k x n) with cold operands: the calls cycle through distinct inputs and
    weights that together exceed the last-level cache, as a training step streams every layer's weights
    and activations from memory once per pass (a repeated call on the same operands runs from cache);
    `cold_output`: each call writes into an output of the pool too (otherwise the allocator hands back the
    previous call's output, still in cache)."""
    out_values = m * n if cold_output else 0
    pool = max(1, min(256, math.ceil(COLD_POOL_BYTES / ((m * k + k * n + out_values) * 4))))
    xs = [torch.randn(m, k) for _ in range(pool)]
    ws = [torch.randn(k, n) for _ in range(pool)]
    outs = [torch.empty(m, n) for _ in range(pool)] if cold_output else None
    inner = max(pool, int(2e8 / (2 * m * k * n)))
    calls = iter(range(10**12))

    def once() -> None:
        i = next(calls) % pool
        if outs is None:
            torch.mm(xs[i], ws[i])
        else:
            torch.mm(xs[i], ws[i], out=outs[i])

    for _ in range(pool):
        once()
    return _median_time(once, repeats=5, inner=inner)


NARROW_ROWS = 512
NARROW_COLS = (8, 16, 32, 64)
NARROW_INNER = (384, 640, 1024)


def rate_share(flops: float, rate_flops_per_s: float, t_s: float) -> float:
    """The share of `rate` a GEMM of `flops` reached in `t_s` seconds, at most 1."""
    return min(1.0, flops / rate_flops_per_s / t_s)


def measure_dropout() -> float:
    import torch

    x = torch.ones(2**20)
    t = _median_time(lambda: torch.nn.functional.dropout(x, 0.05, training=True), repeats=7, inner=5)
    return x.numel() / t


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 64 MiB fp32 copy on this process."""
    import torch

    torch.set_num_threads(1)
    src = torch.ones(16 * 2**20)
    dst = torch.empty_like(src)
    t = _median_time(lambda: dst.copy_(src), repeats=7, inner=3)
    return 2 * src.numel() * 4 / t


def _bandwidth_rank(rank: int, port: int, out: Any) -> None:
    out.put(copy_bandwidth())


def measure_bandwidth() -> float:
    """The copy bandwidth each of a step's two ranks gets while the other copies too (both processes at once, the
    slower counts): the memory bus is shared, and a rank's elementwise ops run beside the other's."""
    return min(_on_ranks(_bandwidth_rank, 2))


# SDPA's CPU flash kernel, causal, fp32, at the lengths and head sizes plans use: per (length, head size) enough
# (batch x heads) rows for about ATTENTION_SCORES computed score elements per call
ATTENTION_LENGTHS = (128, 256, 512, 1024, 2048)
ATTENTION_HEAD_DIMS = (64, 128)
ATTENTION_SCORES = 2**19
ATTENTION_REPEATS = 7


def _attention_rank(rank: int, port: int, out: Any) -> None:
    """One of two processes timing SDPA's forward and backward at once with the other (a step's ranks share the
    socket); puts (length, head size, forward s, backward s per computed score element). The shapes take turns
    within each repeat, so that a slow spell of the machine spreads over them (medians of the repeats)."""
    import torch

    from planner.kernels import cpu_flash_computed_scores

    torch.set_num_threads(1)
    torch.manual_seed(rank)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    cases = []
    for d in ATTENTION_HEAD_DIMS:
        for s in ATTENTION_LENGTHS:
            elements = cpu_flash_computed_scores(s)
            rows = max(1, round(ATTENTION_SCORES / elements))
            qkv = [torch.randn(1, rows, s, d, requires_grad=True) for _ in range(3)]
            cases.append((s, d, rows * elements, qkv, torch.randn(1, rows, s, d), [], []))
    for r in range(ATTENTION_REPEATS + 1):
        for _, _, _, (q, k, v), grad, fwd, bwd in cases:
            t0 = time.perf_counter()
            o = sdpa(q, k, v, is_causal=True)
            t1 = time.perf_counter()
            o.backward(grad)
            t2 = time.perf_counter()
            q.grad = k.grad = v.grad = None
            if r > 0:  # the first round warms up
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
    out.put([(s, d, statistics.median(fwd) / n, statistics.median(bwd) / n) for s, d, n, _, _, fwd, bwd in cases])


def measure_attention() -> tuple[tuple[int, int, float, float], ...]:
    """SDPA's CPU flash kernel per computed score element, both processes at once, the slower per point."""
    answers = _on_ranks(_attention_rank, 2)
    return tuple((s, d, max(a[i][2] for a in answers), max(a[i][3] for a in answers))
                 for i, (s, d, _, _) in enumerate(answers[0]))


# The optimizer step the time model counts (planner/timing.py optimizer_bytes_per_param + clip_bytes_per_param):
# torch.optim.AdamW(foreach=True), torch's default on GPUs, after clip_grad_norm_, over OPTIMIZER_TENSORS
# parameters of OPTIMIZER_TENSOR_VALUES each (every state array 96 MiB, beyond the last-level cache, as a model's)
OPTIMIZER_TENSORS, OPTIMIZER_TENSOR_VALUES = 24, 2**20


def _optimizer_rank(rank: int, port: int, out: Any) -> None:
    """One of two processes timing clip + AdamW steps at once with the other; puts the counted bytes per second."""
    import torch


    torch.set_num_threads(1)
    t = _clip_adamw_step_s(OPTIMIZER_TENSORS, OPTIMIZER_TENSOR_VALUES, foreach=True)
    out.put(_step_bytes_per_value() * OPTIMIZER_TENSORS * OPTIMIZER_TENSOR_VALUES / t)


def _clip_adamw_step_s(tensors: int, values: int, **adamw: Any) -> float:
    """Median seconds of clip_grad_norm_ + torch.optim.AdamW(**adamw).step() over `tensors` fp32 parameters of
    `values` each with their gradients, after one warm-up step (which also allocates the states)."""
    import torch

    params = [torch.nn.Parameter(torch.randn(values)) for _ in range(tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-5, **adamw)

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    step()
    return _median_time(step, repeats=7)


def _step_bytes_per_value() -> float:
    """Bytes the time model counts per fp32 parameter of a clip + AdamW step (planner/timing.py)."""
    from planner.strategy import Optimizer, Precision
    from planner.timing import clip_bytes_per_param, optimizer_bytes_per_param

    return optimizer_bytes_per_param(Optimizer.adamw, Precision.fp32) + clip_bytes_per_param(Precision.fp32)


# (tensors, values per tensor) of the single-tensor step's shapes: 24 x 1 Mi, every state array 96 MiB, beyond the
# last-level cache, as a model's, where the bytes are the cost; 384 x 64, where the loop's host work per tensor is.
# Not a middle size: tensors of 16-64 Ki values that a repeated step keeps in cache moved their bytes at 3-4x the
# large tensors' rate here (one process, 2026-12-07: 8 Ki values 21 us per tensor above the tiny ones' 29 us), which
# a step between a forward and a backward does not see.
SINGLE_TENSOR_SHAPES = ((24, 2**20), (384, 64))


def _single_tensor_rank(rank: int, port: int, out: Any) -> None:
    """One of two processes timing clip + AdamW steps at once with the other, AdamW as the Trainer builds it on the
    CPU (no foreach or fused given: torch runs `_single_tensor_adam`); puts [(tensors, values, seconds)]."""
    import torch

    torch.set_num_threads(1)
    out.put([(tensors, values, _clip_adamw_step_s(tensors, values)) for tensors, values in SINGLE_TENSOR_SHAPES])


def fit_single_tensor(points: Sequence[tuple[int, int, float]]) -> tuple[float, float]:
    """(bytes per second, seconds per tensor) of t = tensors x c + counted bytes / R over the measured (tensors,
    values per tensor, seconds), least squares on relative residuals (each point's equation divided by its time, so
    the tiny tensors' milliseconds count as much as the large ones' tenths of a second); a term that comes out
    negative is dropped and the other fitted alone."""
    per_param = _step_bytes_per_value()
    rows = [(n / t, n * v * per_param / t) for n, v, t in points]  # (tensors, bytes) / t: a c + b B = 1, b = 1/R
    saa = sum(a * a for a, _ in rows)
    sbb = sum(b * b for _, b in rows)
    sab = sum(a * b for a, b in rows)
    sa = sum(a for a, _ in rows)
    sb = sum(b for _, b in rows)
    det = saa * sbb - sab * sab
    c = (sa * sbb - sb * sab) / det if det else 0.0
    inv_rate = (saa * sb - sab * sa) / det if det else sb / sbb
    if c < 0:
        c, inv_rate = 0.0, sb / sbb
    elif inv_rate <= 0:
        return 0.0, sa / saa
    return 1.0 / inv_rate, c


def measure_single_tensor_optimizer() -> tuple[tuple[tuple[int, int, float], ...], float, float]:
    """The single-tensor clip + AdamW step on two processes at once: per shape the slower process's time, and the
    rate and per-tensor cost fitted to them (`fit_single_tensor`)."""
    answers = _on_ranks(_single_tensor_rank, 2)
    points = tuple((n, v, max(a[i][2] for a in answers)) for i, (n, v, _) in enumerate(answers[0]))
    return (points, *fit_single_tensor(points))


def measure_optimizer() -> float:
    """The clip + AdamW step's counted bytes per second on each of two processes stepping at once (the slower):
    its foreach kernels mostly update in place, which writes back lines just read, where the copy that measures
    hbm_bytes_per_s also fetches every destination line before writing it (write-allocate), so the step moves its
    counted bytes faster than the copy does."""
    return min(_on_ranks(_optimizer_rank, 2))


def _allreduce_rank(rank: int, port: int, out: Any, *, sizes: list[int]) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    # the first calls after the group starts run slow (connection set-up): they made the smallest size the slowest
    warm = torch.ones(1024)
    for _ in range(50):
        dist.all_reduce(warm)
    results = []
    for n_bytes in sizes:
        t = torch.ones(max(1, n_bytes // 4))
        for _ in range(5):
            dist.all_reduce(t)
        dist.barrier()
        # back-to-back all-reduces: each one synchronizes the two ranks, so the median is the call's time
        results.append((n_bytes, _median_time(lambda t=t: dist.all_reduce(t), repeats=21)))
    if rank == 0:
        out.put(results)
    dist.barrier()
    dist.destroy_process_group()


def measure_allreduce() -> tuple[float, float, tuple[tuple[int, float], ...]]:
    # 4 KiB .. 16 MiB at 2^k and 3 x 2^k: gloo's time is not one line in the size (planner/gpus.py
    # GPUSpec.allreduce_points): measured here 1.0-1.3 ms at 1 MiB, 2.1-2.7 ms at 1.5 MiB, where ZeRO-1/2's reduce
    # buckets of small models fall
    sizes = sorted([4096 * 2**k for k in range(13)] + [3 * 4096 * 2**k for k in range(12)])
    points = _two_ranks(partial(_allreduce_rank, sizes=sizes))
    return *fit_alpha_beta(points), tuple(points)


def fit_alpha_beta(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """t = alpha + M / B: the bandwidth B from the three largest messages (plain least squares, where the
    bytes dominate), the latency alpha from the four smallest (median of t - M / B: gloo's small-message
    time on a shared VM jumps between runs, and one size alone decides nothing)."""
    ordered = sorted(points)
    big = ordered[-3:]
    mx = statistics.fmean(b for b, _ in big)
    my = statistics.fmean(t for _, t in big)
    slope = sum((b - mx) * (t - my) for b, t in big) / sum((b - mx) ** 2 for b, _ in big)
    beta = 1.0 / max(slope, 1e-15)
    alpha = statistics.median(t - b / beta for b, t in ordered[:4])
    return max(1e-7, alpha), beta


# full sizes 256 KiB .. 64 MiB, with both sides of 32 MiB: glibc serves larger blocks by a fresh mmap each call
# (mallopt(3): M_MMAP_THRESHOLD's dynamic ceiling is DEFAULT_MMAP_THRESHOLD_MAX = 4 Mi x sizeof(long) = 32 MiB on
# 64-bit), whose pages fault in again; measured here, a gather of 33 MiB took 2.5-3x one of 31 MiB
GATHER_SIZES = (2**18, 2**20, 2**22, 2**24, 31 * 2**20, 33 * 2**20, 2**26)


def _gather_scatter_rank(rank: int, port: int, out: Any, *, sizes: Sequence[int]) -> None:
    """One of 2 gloo ranks: median times of all_gather_into_tensor and reduce_scatter_tensor per full size,
    the two collectives interleaved per size so that a slow spell of the machine hits both."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    gather, scatter = [], []
    for n_bytes in sizes:
        full, part = torch.ones(max(2, n_bytes // 4)), torch.ones(max(1, n_bytes // 8))
        all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)  # torch 2.13's name for it
        reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
        calls = (partial(all_gather, full, part), partial(reduce_scatter, part, full))
        for call in calls:
            call()
        dist.barrier()
        repeats = 9 if n_bytes <= 2**22 else 5
        gather.append((n_bytes, _median_time(calls[0], repeats=repeats)))
        scatter.append((n_bytes, _median_time(calls[1], repeats=repeats)))
    if rank == 0:
        out.put((tuple(gather), tuple(scatter)))
    dist.barrier()
    dist.destroy_process_group()


def measure_gather_scatter() -> tuple[SizePoints, SizePoints]:
    """(all-gather points, reduce-scatter points): median seconds per full size, which the planner interpolates
    (planner/comm.py measured_collective_s)."""
    return _two_ranks(partial(_gather_scatter_rank, sizes=GATHER_SIZES))


BUSY_LAYERS, BUSY_WIDTH, BUSY_ROWS, BUSY_REPEATS = 24, 1024, 256, 9


def _busy_comm_rank(rank: int, port: int, out: Any) -> None:
    """One of 2 gloo ranks: DDP backward with and without its gradient all-reduce, and that all-reduce alone; the
    same layers without biases, whose backward all-reduces each weight's gradient synchronously from its hook (as
    DeepSpeed ZeRO-1/2 reduce a bucket: one call after each layer's compute), and those all-reduces back to back.
    Puts (busy factor, seconds more per synchronous call)."""
    import contextlib

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(BUSY_WIDTH, BUSY_WIDTH) for _ in range(BUSY_LAYERS)])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x = torch.randn(BUSY_ROWS, BUSY_WIDTH)
    flat = torch.ones(sum(p.numel() for p in model.parameters()))
    # no biases: every hooked call follows a layer's compute (a bias's hook would fire right after its weight's)
    chain = torch.nn.Sequential(*[torch.nn.Linear(BUSY_WIDTH, BUSY_WIDTH, bias=False) for _ in range(BUSY_LAYERS)])
    params = list(chain.parameters())
    hooks_on = [False]

    def reduce_now(p: Any) -> None:
        if hooks_on[0]:
            dist.all_reduce(p.grad)

    for p in params:
        p.register_post_accumulate_grad_hook(reduce_now)

    def backward(sync: bool) -> None:
        with contextlib.nullcontext() if sync else ddp.no_sync():
            ddp(x).sum().backward()

    def chain_backward() -> None:
        chain(x).sum().backward()

    def hooked() -> None:
        hooks_on[0] = True
        chain_backward()
        hooks_on[0] = False

    def each_alone() -> None:
        for p in params:
            dist.all_reduce(p.grad)

    def timed(fn: Any) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for _ in range(2):
        backward(True), backward(False), dist.all_reduce(flat), chain_backward(), hooked(), each_alone()
    synced, unsynced, alone, plain, in_hooks, hooks_alone = [], [], [], [], [], []
    for _ in range(BUSY_REPEATS):
        unsynced.append(timed(lambda: backward(False)))
        synced.append(timed(lambda: backward(True)))
        alone.append(timed(lambda: dist.all_reduce(flat)))
        plain.append(timed(chain_backward))
        in_hooks.append(timed(hooked))
        hooks_alone.append(timed(each_alone))
    med = statistics.median
    if rank == 0:
        out.put(((med(synced) - med(unsynced)) / med(alone),
                 (med(in_hooks) - med(plain) - med(hooks_alone)) / len(params)))
    dist.barrier()
    dist.destroy_process_group()


def measure_comm_factors() -> tuple[float, float]:
    """(busy factor, sync_call_s): what a collective issued asynchronously beside the ranks' compute (DDP) costs over
    the same collective alone, and what each synchronous one from the gradient hooks (ZeRO-1/2's bucket all-reduce)
    costs more than back to back."""
    busy, sync = _two_ranks(_busy_comm_rank)
    return max(1.0, busy), max(0.0, sync)


def _two_ranks(target: Any) -> Any:
    """Run `target(rank, port, queue)` on 2 spawned processes; rank 0's answer."""
    return _on_ranks(target, 2, answers=1)[0]


HOOK_MODULES = 48


def _forward_backward_s(m: Any, x: Any) -> float:
    """Median seconds of one forward + backward of `m` on `x` (sum as the loss), after three warm-up calls."""
    def once() -> None:
        m(x).sum().backward()

    for _ in range(3):
        once()
    return _median_time(once, repeats=9)


def _hook_rank(rank: int, port: int, out: Any) -> None:
    """One gloo rank: per-module host time of ZeRO-3 and FSDP2 hooks on tiny modules."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                      LOCAL_WORLD_SIZE="1", DS_ACCELERATOR="cpu")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=0, world_size=1)

    def model() -> Any:
        torch.manual_seed(0)
        return torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(HOOK_MODULES)])

    x = torch.randn(4, 8)
    plain = _forward_backward_s(model(), x)
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model(), model_parameters=None, config={
        "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "optimizer": {"type": "SGD", "params": {"lr": 0.0}}, "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9})

    def z3_once() -> None:
        engine.backward(engine(x).sum())

    for _ in range(3):
        z3_once()
    z3 = _median_time(z3_once, repeats=9)
    from torch.distributed.fsdp import fully_shard

    fm = model()
    for layer in fm:
        fully_shard(layer)
    fully_shard(fm)
    fsdp = _forward_backward_s(fm, x)
    out.put(((z3 - plain) / HOOK_MODULES, (fsdp - plain) / HOOK_MODULES))
    dist.destroy_process_group()


def _lora_host_rank(rank: int, port: int, out: Any) -> None:
    """One process: forward + backward of HOOK_MODULES tiny frozen Linear(8, 8) with and without peft's LoRA on each
    (r 8, dropout 0.05, as the planner's defaults), per adapted linear: the Python peft's lora.Linear.forward runs
    per call (peft/tuners/lora/layer.py: the active-adapter loop, the dtype cast, the dropout module, lora_A and
    lora_B, the scaling lookup and the add) and its autograd nodes, where the tiny shapes make the arithmetic
    negligible."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(1)

    def model() -> Any:
        torch.manual_seed(0)
        m = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(HOOK_MODULES)])
        m.requires_grad_(False)
        return m

    x = torch.randn(4, 8, requires_grad=True)
    plain = model()
    adapted = get_peft_model(model(), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                 target_modules=[str(i) for i in range(HOOK_MODULES)]))
    adapted.train()
    # interleaved: a slow spell hits both
    times = [(_forward_backward_s(adapted, x), _forward_backward_s(plain, x)) for _ in range(3)]
    out.put(statistics.median(a - p for a, p in times) / HOOK_MODULES)


def measure_lora_host() -> float:
    return max(0.0, _on_ranks(_lora_host_rank, 1)[0])


def measure_hooks() -> tuple[float, float]:
    z3, fsdp = _on_ranks(_hook_rank, 1)[0]
    return max(0.0, z3), max(0.0, fsdp)


def fit_device(device: str = "auto", passes: int = 1) -> Any:
    """The CPU device's fit (`DeviceFit`, from the medians of `passes` passes), or on a machine with CUDA the GPU's
    (profiler/device_fit_cuda.py, one pass: a GPU's timings repeat within a few percent, and it takes medians of
    repeats per point)."""
    import torch

    from profiler.device_fit_cuda import fit_cuda_device, select_device

    if select_device(device, torch.cuda.is_available()) == "cuda":
        return fit_cuda_device()
    return fit_cpu_device(passes)


def fit_cpu_device(passes: int = 1) -> DeviceFit:
    """The CPU device's fit; with `passes` > 1 every measurement runs that many times and the fit is made from the
    medians (`median_fit`)."""
    if passes > 1:
        return median_fit([fit_cpu_device() for _ in range(passes)])
    import torch

    torch.set_num_threads(1)
    host, gemms = measure_gemms()
    rate, m0 = fit_gemm_curve(gemms, host)
    narrow = fit_narrow(gemms, rate, m0, host)
    inner = fit_narrow_inner(gemms, rate, m0, host)
    bw = measure_bandwidth()
    alpha, beta, ar = measure_allreduce()
    gather_pts, scatter_pts = measure_gather_scatter()
    z3, fsdp = measure_hooks()
    busy, sync = measure_comm_factors()
    attention = measure_attention()
    optimizer = measure_optimizer()
    single_points, single_rate, single_tensor_s = measure_single_tensor_optimizer()
    lora_host = measure_lora_host()
    return DeviceFit(host_op_s=host, peak_fp32_flops_per_s=rate, gemm_half_rate_rows=m0, gemm_narrow_cols=narrow,
                     gemm_narrow_inner=inner, dropout_values_per_s=measure_dropout(), hbm_bytes_per_s=bw,
                     collective_alpha_s=alpha, intra_node_bytes_per_s=beta, zero3_module_s=z3, fsdp_unit_s=fsdp,
                     busy_comm_factor=busy, gemm_points=gemms, allreduce_points=ar,
                     allgather_points=gather_pts, reduce_scatter_points=scatter_pts, sync_call_s=sync,
                     sdpa_points=attention, optimizer_bytes_per_s=optimizer, lora_linear_host_s=lora_host,
                     adamw_single_tensor_points=single_points, adamw_single_tensor_bytes_per_s=single_rate,
                     adamw_single_tensor_s=single_tensor_s)


def _median_points(runs: Sequence[Sequence[tuple[Any, ...]]]) -> tuple[tuple[Any, ...], ...]:
    """Per measured point (the same sizes in every run, the time last), its median time over the runs."""
    return tuple((*pts[0][:-1], statistics.median(p[-1] for p in pts)) for pts in zip(*runs, strict=True))


def _median_attention(runs: Sequence[Sequence[tuple[int, int, float, float]]]) -> tuple[tuple[int, int, float, float],
                                                                                      ...]:
    """Per (length, head size) the median forward and the median backward time over the runs that measured them
    (fits made before the attention points have none)."""
    runs = [r for r in runs if r]
    if not runs:
        return ()
    return tuple((pts[0][0], pts[0][1], statistics.median(p[2] for p in pts), statistics.median(p[3] for p in pts))
                 for pts in zip(*runs, strict=True))


def median_fit(fits: Sequence[DeviceFit]) -> DeviceFit:
    """One fit from several passes over the same measurements: every measured point's median time and every directly
    measured constant's median, then the GEMM curve, LoRA's narrow shares and gloo's alpha-beta line fitted again to
    the median points (not medians of fitted constants, which could pair a rate from one pass with a half-rate
    row count from another). A slow spell of a shared machine that hits one pass of three then moves no constant;
    in one pass it sets them (measured: the busy-comm factor 1.26-2.35 and the GEMM rate 102-146 GFLOP/s in four
    fits of one quiet VM within 70 minutes)."""
    if len(fits) == 1:
        return fits[0]

    def med(name: str) -> float:
        return statistics.median(getattr(f, name) for f in fits)

    host = med("host_op_s")
    gemms = _median_points([f.gemm_points for f in fits])
    rate, m0 = fit_gemm_curve(gemms, host)
    allreduce = _median_points([f.allreduce_points for f in fits])
    alpha, beta = fit_alpha_beta(allreduce)
    single = [f.adamw_single_tensor_points for f in fits if f.adamw_single_tensor_points]
    single_points = _median_points(single) if single else ()
    single_rate, single_tensor_s = fit_single_tensor(single_points) if single_points else (0.0, 0.0)
    return DeviceFit(host_op_s=host, peak_fp32_flops_per_s=rate, gemm_half_rate_rows=m0,
                     gemm_narrow_cols=fit_narrow(gemms, rate, m0, host),
                     gemm_narrow_inner=fit_narrow_inner(gemms, rate, m0, host),
                     dropout_values_per_s=med("dropout_values_per_s"),
                     hbm_bytes_per_s=med("hbm_bytes_per_s"), collective_alpha_s=alpha, intra_node_bytes_per_s=beta,
                     zero3_module_s=med("zero3_module_s"), fsdp_unit_s=med("fsdp_unit_s"),
                     busy_comm_factor=med("busy_comm_factor"), gemm_points=gemms, allreduce_points=allreduce,
                     allgather_points=_median_points([f.allgather_points for f in fits]),
                     reduce_scatter_points=_median_points([f.reduce_scatter_points for f in fits]),
                     sync_call_s=med("sync_call_s"),
                     sdpa_points=_median_attention([f.sdpa_points for f in fits]),
                     optimizer_bytes_per_s=med("optimizer_bytes_per_s"), lora_linear_host_s=med("lora_linear_host_s"),
                     adamw_single_tensor_points=single_points, adamw_single_tensor_bytes_per_s=single_rate,
                     adamw_single_tensor_s=single_tensor_s)


def device_fit_from_dict(data: dict[str, Any]) -> DeviceFit:
    """A CPU `DeviceFit` from its JSON form (`to_dict`, or a file `profile calibrate --device` wrote: its header
    fields are ignored)."""
    names = DeviceFit.__dataclass_fields__
    kept = {k: v for k, v in data.items() if k in names}
    return DeviceFit(**{k: tuple(tuple(p) for p in v) if isinstance(v, list) else v for k, v in kept.items()})
