"""Compute time of one micro-batch from the shapes of its kernels, not from FLOPs alone.

Each linear of a decoder layer runs three GEMMs per micro-batch of m = b x s tokens: forward
(m x k) @ (k x n), input gradient (m x n) @ (n x k), and, when the weight trains, weight gradient
(k x m) @ (m x n). A GEMM's time is the larger of its math time and its memory time (the roofline of
NVIDIA's "Matrix Multiplication Background User's Guide", Sec. 2, "Math and memory bounds"):
- math: 2mkn / (peak x efficiency x shape efficiency). On a GPU the shape efficiency is the wave
  quantization of that guide (Sec. 3.2): the output is cut into tiles (256 x 128, 128 x 256 or
  128 x 128, cuBLAS's large tiles of Sec. 2.3, whichever fills the waves best), one thread block per
  tile, `sm_count` tiles at a time; the last partial wave leaves SMs idle, so the efficiency is
  tiles / (waves x SMs). On the CPU the measured curve is
  rate(m) = R x m / (m + m0) (`GPUSpec.gemm_half_rate_rows`, fitted by `ftplan profile calibrate
  --device`): oneDNN/MKL pack the k x n weight once per call, a cost proportional to k x n, so the
  rate grows with the rows m that share it; outputs narrower than the micro-kernel's register block
  (LoRA's n = r) run at a measured share of it (`GPUSpec.gemm_narrow_cols`: on this machine n = 8
  reaches about a sixth of the rate n = 16 does).
- memory: the bytes of A, B and C over the memory bandwidth. LoRA's adapters (n or k = r, e.g. 8) are
  memory-bound GEMMs: reading the m x k input costs more than their 2mkr FLOPs.
`efficiency` stays the achievable fraction of peak for large shapes (planner/compute.py, cited there),
which also covers the memory-bound norms, activations and softmax that scale with the GEMMs.
Attention: FlashAttention / SDPA run the core at the same efficiency; eager attention also writes and
reads the b x a x s x s scores and probabilities (4 passes of 16-bit or fp32 values per forward,
twice that in backward). Every eager op also costs the host a dispatch (`GPUSpec.host_op_s`): on a
GPU the host runs ahead and only a host-bound micro-batch pays it; on the CPU host and device are one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from planner import moe
from planner.choices import Attn, GradCkpt, Method
from planner.gpus import GPUSpec
from planner.models import ModelSpec
from planner.params import resolve_lora_targets

# cuBLAS's large tiles on Ampere/Hopper (NVIDIA GEMM guide, Sec. 2.3); its heuristics pick, per shape,
# the tile whose waves fill the SMs best, and these three are about equally efficient per tile.
TILES = ((256, 128), (128, 256), (128, 128))
# Eager ops per decoder layer and pass in transformers' Llama layer (modeling_llama.py): two RMSNorms
# (pow, mean, add, rsqrt, mul, mul, to: 7 each), rotary embedding (q and k: 2 x (mul, slice, slice,
# neg, cat, mul, add) = 14), attention reshapes and SDPA (q/k/v view + transpose: 6; sdpa 1; transpose,
# reshape 2), SwiGLU (silu, mul: 2), two residual adds, the 7 projections: 46 in forward. Backward runs
# about one autograd node per forward op plus the weight-gradient GEMMs: x2.
OPS_PER_LAYER_FORWARD = 46
OPS_PER_LORA_LINEAR = 4  # dropout, lora_A, lora_B, scale-and-add (peft/tuners/lora/layer.py Linear.forward)


@dataclass(frozen=True, slots=True)
class Gemm:
    m: int
    k: int
    n: int
    count: int = 1  # identical GEMMs (e.g. the experts a token visits)
    # one grouped GEMM over `count` groups (transformers' grouped_mm experts, planner/moe.py) rather than
    # `count` separate launches
    grouped: bool = False
    weight: float = 1.0  # share of the decoder layers holding it (DeepSeek-V3's MoE layers: 58 of 61)


def wave_efficiency(m: int, n: int, sm_count: int) -> float:
    """Share of SM time doing useful tiles, tiles / (ceil(tiles / SMs) x SMs) (NVIDIA GEMM guide,
    Sec. 3.2), for the best of cuBLAS's large tiles. 1 on devices without SMs (the CPU)."""
    if sm_count <= 0 or m <= 0 or n <= 0:
        return 1.0
    best = 0.0
    for tm, tn in TILES:
        tiles = math.ceil(m / tm) * math.ceil(n / tn)
        best = max(best, tiles / (math.ceil(tiles / sm_count) * sm_count))
    return best


def cpu_gemm_shape(g: Gemm, gpu: GPUSpec) -> float:
    """The CPU's measured share of its GEMM rate (1 where not fitted): m/(m+m0), since MKL/oneDNN pack the
    weight once per call and rows share it, times the measured share for narrow outputs (LoRA's n = r: an
    output narrower than the micro-kernel's register block leaves its lanes idle), interpolated."""
    f = g.m / (g.m + gpu.gemm_half_rate_rows) if gpu.gemm_half_rate_rows > 0 else 1.0
    return f * narrow_share(g.n, gpu.gemm_narrow_cols)


def narrow_share(n: int, table: tuple[tuple[int, float], ...]) -> float:
    """Linear interpolation in (size, share) pairs sorted by size; the first share below, 1 above the last."""
    if not table or n >= table[-1][0]:
        return 1.0
    if n <= table[0][0]:
        return table[0][1]
    for (n0, f0), (n1, f1) in zip(table, table[1:], strict=False):
        if n0 <= n <= n1:
            return f0 + (f1 - f0) * (n - n0) / (n1 - n0)
    return 1.0


def gemm_time_s(g: Gemm, gpu: GPUSpec, peak_flops_per_s: float, efficiency: float, elem_bytes: float) -> float:
    """Roofline time of one GEMM (NVIDIA GEMM guide, Sec. 2): max(math, memory)."""
    flops = 2.0 * g.m * g.k * g.n
    if g.grouped and g.count > 1:  # experts: one grouped kernel, or transformers' loop of one GEMM per expert
        waves = moe.grouped_wave_efficiency(g.m, g.n, g.count, gpu.sm_count, TILES) if grouped_mm_runs(gpu) \
            else moe.looped_wave_efficiency(g.m, g.n, gpu.sm_count, TILES)
    else:
        waves = wave_efficiency(g.m, g.n, gpu.sm_count)
    shape = waves * cpu_gemm_shape(g, gpu)
    math_s = flops / (peak_flops_per_s * efficiency * shape)
    memory_s = (g.m * g.k + g.k * g.n + g.m * g.n) * elem_bytes / gpu.hbm_bytes_per_s
    return g.weight * g.count * max(math_s, memory_s)


def grouped_mm_runs(gpu: GPUSpec) -> bool:
    """transformers' grouped_mm experts run as one grouped GEMM where torch has the kernel (planner/moe.py)."""
    return moe.grouped_mm_available(gpu)


@cache
def layer_gemms(m: ModelSpec, tokens: int, method: Method, lora_r: int, lora_targets: tuple[str, ...],
                trains_weights: bool, tp: int, ep: int = 1) -> tuple[tuple[Gemm, ...], tuple[Gemm, ...]]:
    """(forward GEMMs, backward GEMMs) of one decoder layer for a micro-batch of `tokens` tokens; TP
    splits each weight's output (column-parallel) or input (row-parallel) dimension t ways."""
    fwd: list[Gemm] = []
    bwd: list[Gemm] = []
    lora = set(resolve_lora_targets(m, lora_targets)) if method is not Method.full else set()
    for lin in m.linears():
        # an MoE linear: one GEMM per expert over the tokens routed to it (active of copies on average, as one
        # grouped GEMM where transformers runs grouped_mm: planner/moe.py); a dense one: one GEMM over every token
        c = lin.copies
        rows = max(1, round(tokens * lin.active_copies / lin.copies)) if c > 1 else tokens
        k, n = lin.in_features, max(1, lin.out_features // tp)
        grouped, w = c > 1, lin.layer_share
        if grouped and ep > 1:
            # expert parallelism: each rank runs its c / ep experts on the tokens the whole group routes to them,
            # and the step waits for the busiest rank (planner/moe.py load_imbalance_factor)
            c, rows = max(1, c // ep), rows * ep
            w *= moe.load_imbalance_factor(tokens, lin.copies, int(lin.active_copies), ep)
        fwd.append(Gemm(rows, k, n, c, grouped, w))
        bwd.append(Gemm(rows, n, k, c, grouped, w))  # input gradient
        if trains_weights:
            bwd.append(Gemm(k, rows, n, c, grouped, w))  # weight gradient
        if lin.name in lora:
            r = lora_r
            fwd += [Gemm(rows, k, r, c, grouped, w), Gemm(rows, r, n, c, grouped, w)]
            # input gradients through B and A, weight gradients of A and B
            bwd += [Gemm(rows, n, r, c, grouped, w), Gemm(rows, r, k, c, grouped, w), Gemm(k, rows, r, c, grouped, w),
                    Gemm(r, rows, n, c, grouped, w)]
    return tuple(fwd), tuple(bwd)


def gemm_shape_factor(gemms: tuple[Gemm, ...], gpu: GPUSpec, peak: float, efficiency: float,
                      elem_bytes: float) -> float:
    """Time of the GEMMs over the time their FLOPs take at large-shape efficiency (>= 1)."""
    flops = sum(2.0 * g.m * g.k * g.n * g.count * g.weight for g in gemms)
    if flops <= 0:
        return 1.0
    actual = sum(gemm_time_s(g, gpu, peak, efficiency, elem_bytes) for g in gemms)
    return max(1.0, actual / (flops / (peak * efficiency)))


def lora_elementwise_bytes(m: ModelSpec, tokens: int, lora_targets: tuple[str, ...], tp: int,
                           elem_bytes: float, dropout: bool = True) -> float:
    """Memory traffic per layer and micro-batch of peft's LoRA branch besides its two GEMMs
    (peft/tuners/lora/layer.py Linear.forward: result + lora_B(lora_A(dropout(x))) * scaling): forward
    dropout reads x and writes x' (2mk values; peft's dropout is nn.Identity at lora_dropout 0), scaling
    and the add read and write the m x n branch and result (5mn); backward runs the dropout mask over the
    branch's input gradient (2mk), the scaling (2mn) and adds the branch's input gradient to the base
    layer's (3mk): 7mk + 7mn values."""
    targets = set(resolve_lora_targets(m, lora_targets))
    k_values = 7.0 if dropout else 3.0
    values = sum(tokens * (k_values * lin.in_features + 7.0 * lin.out_features // tp) for lin in m.linears()
                 if lin.name in targets)
    return values * elem_bytes


def lora_dropout_values(m: ModelSpec, tokens: int, lora_targets: tuple[str, ...]) -> float:
    """Values one layer's LoRA dropouts draw per micro-batch: every adapted linear has its own
    `lora_dropout` module, so q/k/v (and gate/up) each draw a mask over the same input (m x k each)."""
    targets = set(resolve_lora_targets(m, lora_targets))
    return sum(float(tokens * lin.in_features) for lin in m.linears() if lin.name in targets)


def eager_attention_bytes(b: int, s: int, heads: int, elem_bytes: float) -> float:
    """Scores and probabilities of eager attention per layer, forward and backward: written and read
    twice each in forward (QK^T -> softmax -> PV), about twice that in backward."""
    return 3 * 4 * b * heads * s * s * elem_bytes


def host_ops_per_micro_batch(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...],
                             grad_ckpt: GradCkpt) -> float:
    """Eager ops the host dispatches for one micro-batch: forward, backward (x2), recomputed forward."""
    lora = len(resolve_lora_targets(m, lora_targets)) if method is not Method.full else 0
    fwd = OPS_PER_LAYER_FORWARD + OPS_PER_LORA_LINEAR * lora
    passes = 3 + (1 if grad_ckpt is GradCkpt.full else 0)
    return layers * fwd * passes


def attention_memory_s(m: ModelSpec, attn: Attn, b: int, s: int, layers: int, tp: int, elem_bytes: float,
                       gpu: GPUSpec) -> float:
    """Extra memory time of eager attention (FlashAttention/SDPA keep the scores on chip)."""
    if attn is not Attn.eager:
        return 0.0
    return layers * eager_attention_bytes(b, s, max(1, m.num_heads // tp), elem_bytes) / gpu.hbm_bytes_per_s
