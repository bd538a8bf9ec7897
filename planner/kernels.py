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
`efficiency` is the achievable fraction of peak for large GEMMs (planner/compute.py: the measured
"maximum achievable matmul FLOPS" of each GPU, cited there).
Elementwise ops (the norms, rotary embedding, SwiGLU, residual adds, the loss's upcast and log-softmax) are
memory-bound: their bytes per token are counted from transformers' Llama layer (`layer_elementwise_bytes`)
and take bytes / memory bandwidth; fused kernels (Liger, torch.compile) read and write each tensor once.
Attention: FlashAttention-2 / SDPA's flash kernel computes only the blocks left of the causal diagonal and
runs at the GPU's measured attention efficiency, its 128-row blocks spread over the SMs like GEMM tiles
(`flash_attention_s`); eager attention runs the full s x s matmuls and writes and reads the b x a x s x s
scores and probabilities (4 passes of 16-bit or fp32 values per forward, twice that in backward). Every
eager op also costs the host a dispatch (`GPUSpec.host_op_s`): on a GPU the host runs ahead of the device
and only a host-bound micro-batch pays it; on the CPU host and device are one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

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
# peft/tuners/lora/layer.py Linear.forward per adapted linear: the cast of x to lora_A's dtype, dropout, lora_A,
# lora_B, the scaling multiply and the add into the base result (under autocast also the casts of lora_A's and
# lora_B's fp32 weights and inputs to 16 bits, which autocast dispatches as ops of their own): 8.
OPS_PER_LORA_LINEAR = 8
# FlashAttention-2 splits every (batch, head) into blocks of 128 query rows, one thread block each (Dao 2023,
# "FlashAttention-2", arXiv 2307.08691, Sec. 3.2 "parallelism over the sequence length"); with a causal mask the
# blocks right of the diagonal are skipped (Sec. 3.1.1), and the backward pass runs 2.5x the forward FLOPs since it
# recomputes the attention matrix (Sec. 4.1: "the backward pass ... 2.5 times the forward").
FLASH_BLOCK_ROWS = 128
FLASH_BACKWARD_OVER_FORWARD = 2.5
# Backward of an elementwise op reads its output gradient and the inputs it saved and writes an input gradient per
# input, and autograd adds the gradients of tensors used twice: a dispatch mode over transformers' LlamaDecoderLayer
# counts 2.21x the forward's bytes in bf16 and 2.22x in fp32 (tests/profiler/test_elementwise_bytes.py).
ELEMENTWISE_BACKWARD_OVER_FORWARD = 2.2


@dataclass(frozen=True, slots=True)
class Gemm:
    m: int
    k: int
    n: int
    count: int = 1  # identical GEMMs (e.g. the experts a token visits)


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
    shape = wave_efficiency(g.m, g.n, gpu.sm_count) * cpu_gemm_shape(g, gpu)
    if gpu.gemm_half_rate_inner > 0:  # a measured tile prologue / epilogue (profiler/device_fit_cuda.py)
        shape *= g.k / (g.k + gpu.gemm_half_rate_inner)
    math_s = flops / (peak_flops_per_s * efficiency * shape)
    memory_s = (g.m * g.k + g.k * g.n + g.m * g.n) * elem_bytes / gpu.hbm_bytes_per_s
    return g.count * max(math_s, memory_s)


@cache
def layer_gemms(m: ModelSpec, tokens: int, method: Method, lora_r: int, lora_targets: tuple[str, ...],
                trains_weights: bool, tp: int) -> tuple[tuple[Gemm, ...], tuple[Gemm, ...]]:
    """(forward GEMMs, backward GEMMs) of one decoder layer for a micro-batch of `tokens` tokens; TP
    splits each weight's output (column-parallel) or input (row-parallel) dimension t ways."""
    fwd: list[Gemm] = []
    bwd: list[Gemm] = []
    lora = set(resolve_lora_targets(m, lora_targets)) if method is not Method.full else set()
    for lin in m.linears():
        # an MoE linear: `num_experts` GEMMs, each over the tokens routed to it (experts_per_token of
        # num_experts on average); a dense one: one GEMM over every token
        c = m.num_experts if lin.copies > 1 else 1
        rows = max(1, tokens * m.experts_per_token // m.num_experts) if lin.copies > 1 else tokens
        k, n = lin.in_features, max(1, lin.out_features // tp)
        fwd.append(Gemm(rows, k, n, c))
        bwd.append(Gemm(rows, n, k, c))  # input gradient
        if trains_weights:
            bwd.append(Gemm(k, rows, n, c))  # weight gradient
        if lin.name in lora:
            r = lora_r
            fwd += [Gemm(rows, k, r, c), Gemm(rows, r, n, c)]
            # input gradients through B and A, weight gradients of A and B
            bwd += [Gemm(rows, n, r, c), Gemm(rows, r, k, c), Gemm(k, rows, r, c), Gemm(r, rows, n, c)]
    return tuple(fwd), tuple(bwd)


def gemm_shape_factor(gemms: tuple[Gemm, ...], gpu: GPUSpec, peak: float, efficiency: float,
                      elem_bytes: float) -> float:
    """Time of the GEMMs over the time their FLOPs take at large-shape efficiency (>= 1)."""
    flops = sum(2.0 * g.m * g.k * g.n * g.count for g in gemms)
    if flops <= 0:
        return 1.0
    actual = sum(gemm_time_s(g, gpu, peak, efficiency, elem_bytes) for g in gemms)
    return max(1.0, actual / (flops / (peak * efficiency)))


def lora_elementwise_bytes(m: ModelSpec, tokens: int, lora_targets: tuple[str, ...], tp: int,
                           elem_bytes: float, dropout: bool = True, fp32_adapters: bool = False) -> float:
    """Memory traffic per layer and micro-batch of peft's LoRA branch besides its two GEMMs
    (peft/tuners/lora/layer.py Linear.forward: result + lora_B(lora_A(dropout(x))) * scaling), in bytes, for
    inputs of `elem_bytes`. Per input value (k side): forward dropout reads x and writes x' and a 1-byte mask
    (peft's dropout is nn.Identity at lora_dropout 0), backward runs the mask over the branch's input gradient,
    and adds the branch's input gradient to the base layer's (read 2, write 1 values). With fp32 adapters under
    16-bit mixed precision (`fp32_adapters`: peft keeps adapter weights in fp32, `autocast_adapter_dtype`) peft
    casts x to fp32 before the dropout (`_cast_input_dtype`) and autocast casts the fp32 x' back to 16 bits for
    lora_A's matmul: (e + 4) + (4 + e) bytes each way, and the dropout runs on fp32 values. Per output value
    (n side): the scaling and the add read and write the branch and result (5 values), their backward 2."""
    targets = set(resolve_lora_targets(m, lora_targets))
    e = elem_bytes
    a = 4.0 if fp32_adapters else e  # the dropout's operand
    casts = 2 * (e + 4.0) if fp32_adapters else 0.0
    k_bytes = 2 * casts + (2 * (2 * a + 1.0) if dropout else 0.0) + 3.0 * e
    total = sum(tokens * (k_bytes * lin.in_features + 7.0 * e * lin.out_features / tp) for lin in m.linears()
                if lin.name in targets)
    return total


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
    return layers * eager_attention_bytes(b, s, max(1, m.num_heads // tp), elem_bytes) / gpu.elementwise_bytes_per_s


def causal_block_share(s: int, block: int = FLASH_BLOCK_ROWS) -> float:
    """Share of the s x s attention blocks a causal flash kernel computes: n(n+1)/2 of n^2 blocks of `block`
    rows (the diagonal blocks are computed whole)."""
    n = max(1, math.ceil(s / block))
    return (n + 1) / (2 * n)


def flash_attention_s(m: ModelSpec, b: int, s: int, tp: int, gpu: GPUSpec, peak_flops_per_s: float,
                      efficiency: float) -> tuple[float, float]:
    """(forward, backward) seconds of one layer's FlashAttention-2 / SDPA-flash core for a micro-batch: the causal
    blocks' FLOPs (4 s q_dim per token at full s, Narayanan et al.'s count) at the GPU's attention efficiency, the
    b x heads x ceil(s / 128) thread blocks filling the SMs in waves like GEMM tiles."""
    heads = max(1, m.num_heads // tp)
    fwd_flops = b * s * 4.0 * s * heads * m.head_dim * causal_block_share(s)
    tiles = b * heads * math.ceil(s / FLASH_BLOCK_ROWS)
    waves = tiles / (math.ceil(tiles / gpu.sm_count) * gpu.sm_count) if gpu.sm_count > 0 else 1.0
    fwd_s = fwd_flops / (peak_flops_per_s * efficiency * waves)
    return fwd_s, FLASH_BACKWARD_OVER_FORWARD * fwd_s


def norm_bytes(h: int, e: float, fused: bool) -> float:
    """Forward bytes per token of one RMSNorm over h values in a stream of e-byte values. transformers'
    LlamaRMSNorm.forward: to(float32) (read e, write 4), pow(2) (read 4, write 4), mean (read 4), x * rsqrt (read
    4, write 4), to(input dtype) (read 4, write e), weight * x (read e, write e); the casts are no-ops for an fp32
    stream. A fused kernel (Liger's, Inductor's) reads e and writes e."""
    if fused:
        return 2.0 * e * h
    casts = 0.0 if e >= 4 else (e + 4.0) * 2
    return h * (casts + 8.0 + 4.0 + 8.0 + 2.0 * e)


def layer_elementwise_bytes(m: ModelSpec, e: float, fused: bool, tp: int = 1) -> float:
    """Forward memory traffic per token of one decoder layer's elementwise ops (transformers' modeling_llama.py
    LlamaDecoderLayer), for e-byte activations: two norms; rotary embedding on q and k (apply_rotary_pos_emb:
    q * cos, rotate_half's neg and cat, * sin, the add: about 10 e per value); the attention output's transpose
    to contiguous (2 e per value); two residual adds (3 e per value); SwiGLU's act(gate) and * up (5 e per
    intermediate value; GeLU MLPs 2 e). MoE layers run `experts_per_token` MLPs per token. Fused kernels
    (`fused`: Liger or torch.compile) apply rotary in place (2 e) and SwiGLU in one pass (3 e). TP splits the
    attention and MLP parts, not the norms and residual stream."""
    h = m.hidden_size
    q, kv = m.q_dim / tp, m.kv_dim / tp
    i = m.intermediate_size * (m.experts_per_token if m.is_moe else 1) / tp
    rope = 0.0 if m.model_type == "bloom" else (2.0 if fused else 10.0) * e * (q + kv)
    mlp = (3.0 if fused else 5.0) * e * i if m.gated_mlp else 2.0 * e * i
    return 2 * norm_bytes(h, e, fused) + rope + 2.0 * e * q + 2 * 3.0 * e * h + mlp


def loss_elementwise_bytes(vocab: int, e: float, fused_loss: bool) -> float:
    """Forward plus backward memory traffic per token of the LM loss besides the head GEMM (transformers'
    ForCausalLMLoss: logits.float() (read e, write 4), cross_entropy's log_softmax (read 4, write 4) and its
    backward (read 4 twice, write 4), the gradient cast back (read 4, write e)); Liger's fused linear
    cross-entropy keeps the logits on chip chunk by chunk: about one read and write of e per value."""
    if fused_loss:
        return 2.0 * e * vocab
    casts = 0.0 if e >= 4 else 2 * (e + 4.0)
    return vocab * (casts + 8.0 + 12.0)
