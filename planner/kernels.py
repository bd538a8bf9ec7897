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
(`flash_attention_s`); eager attention and SDPA's math kernel run the full s x s matmuls and pass over the
b x a x s x s scores as many times, in the dtypes, their ops do (`SCORE_PASSES`, one count per kernel). Every
eager op also costs the host a dispatch (`GPUSpec.host_op_s`): on a GPU the host runs ahead of the device
and only a host-bound micro-batch pays it; on the CPU host and device are one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache

from planner import moe
from planner.choices import Attn, GradCkpt, Method
from planner.gpus import GPUSpec
from planner.model_layers import AttentionShape, LayerKind, MlpShape, NormShape
from planner.models import ModelSpec
from planner.params import adapted_count, adapted_linears

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
    # one grouped GEMM over `count` groups (transformers' grouped_mm experts, planner/moe.py) rather than
    # `count` separate launches
    grouped: bool = False
    weight: float = 1.0  # share of the decoder layers holding it (DeepSeek-V3's MoE layers: 58 of 61)
    reads: int = 0  # values read besides A and B (the weight a LoRA fold adds its product to)


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
    output narrower than the micro-kernel's register block leaves its lanes idle), and the measured share for a
    narrow inner dimension (LoRA's k = r: a few multiply-adds per output value, whose write is then the cost),
    interpolated."""
    f = g.m / (g.m + gpu.gemm_half_rate_rows) if gpu.gemm_half_rate_rows > 0 else 1.0
    return f * narrow_share(g.n, gpu.gemm_narrow_cols) * narrow_share(g.k, gpu.gemm_narrow_inner)


def narrow_share(n: int, table: tuple[tuple[int, float], ...]) -> float:
    """Linear interpolation in (size, share) pairs sorted by size; the first share below, the last at its own size
    (LoRA's r = 64 is a measured point), 1 above the last."""
    if not table or n > table[-1][0]:
        return 1.0
    return _interpolate(table, n)


def gemm_time_s(g: Gemm, gpu: GPUSpec, peak_flops_per_s: float, efficiency: float, elem_bytes: float) -> float:
    """Roofline time of one GEMM (NVIDIA GEMM guide, Sec. 2): max(math, memory)."""
    flops = 2.0 * g.m * g.k * g.n
    if g.grouped and g.count > 1:  # experts: one grouped kernel, or transformers' loop of one GEMM per expert
        waves = moe.grouped_wave_efficiency(g.m, g.n, g.count, gpu.sm_count, TILES) if grouped_mm_runs(gpu) \
            else moe.looped_wave_efficiency(g.m, g.n, gpu.sm_count, TILES)
    else:
        waves = wave_efficiency(g.m, g.n, gpu.sm_count)
    shape = waves * cpu_gemm_shape(g, gpu)
    if gpu.gemm_half_rate_inner > 0:  # a measured tile prologue / epilogue (profiler/device_fit_cuda.py)
        shape *= g.k / (g.k + gpu.gemm_half_rate_inner)
    math_s = flops / (peak_flops_per_s * efficiency * shape)
    memory_s = (g.m * g.k + g.k * g.n + g.m * g.n + g.reads) * elem_bytes / gpu.hbm_bytes_per_s
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
    lora = set(adapted_linears(m, lora_targets)) if method is not Method.full else set()
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
        if lin in lora and lin.lora_param:
            # peft's ParamWrapper (LoRA on a parameter: fused experts, a router that is not nn.Linear) folds the
            # update into the weight on every forward, W' = W + s A B, one batched product over the experts that
            # reads W and writes W' whatever the tokens (peft/tuners/lora/layer.py _LoraFactorsProxy, baddbmm);
            # backward needs the weight gradient dW' of the expert GEMMs (as a full fine-tune does) and folds it
            # into A's and B's gradients (two batched products reading dW'). Its rank is peft's (gate_up: 2r).
            r = max(1, round(lora_r * lin.lora_params_per_rank() / (lin.copies * (lin.in_features + lin.out_features))))
            share = lin.layer_share
            fwd.append(Gemm(k, r, n, c, weight=share, reads=k * n))
            if not trains_weights:
                bwd.append(Gemm(k, rows, n, c, grouped, w))
            bwd += [Gemm(k, n, r, c, weight=share), Gemm(r, k, n, c, weight=share)]
        elif lin in lora:
            r = lora_r
            fwd += [Gemm(rows, k, r, c, grouped, w), Gemm(rows, r, n, c, grouped, w)]
            # input gradients through B and A, weight gradients of A and B. F.linear multiplies by the weight's
            # transpose, a column-major operand, for which autograd's mm_mat2_backward (torch/csrc/autograd/
            # FunctionsManual.cpp) runs grad.t().mm(input).t(): out x rows x in, so A's (r x k) gradient is an
            # r-row GEMM and B's (n x r) one an r-wide output (torch.profiler on a LoRA step of
            # benchmarks/rank_order.py: aten::mm [8, 512] x [512, 384] and [384, 512] x [512, 8])
            bwd += [Gemm(rows, n, r, c, grouped, w), Gemm(rows, r, k, c, grouped, w), Gemm(r, rows, k, c, grouped, w),
                    Gemm(n, rows, r, c, grouped, w)]
    return tuple(fwd), tuple(bwd)


def gemm_shape_factor(gemms: tuple[Gemm, ...], gpu: GPUSpec, peak: float, efficiency: float,
                      elem_bytes: float) -> float:
    """Time of the GEMMs over the time their FLOPs take at large-shape efficiency (>= 1)."""
    flops = sum(2.0 * g.m * g.k * g.n * g.count * g.weight for g in gemms)
    if flops <= 0:
        return 1.0
    actual = sum(gemm_time_s(g, gpu, peak, efficiency, elem_bytes) for g in gemms)
    return max(1.0, actual / (flops / (peak * efficiency)))


@lru_cache(maxsize=8192)  # pure in hashable arguments; the search asks for it per candidate
def lora_elementwise_bytes(m: ModelSpec, tokens: int, lora_targets: tuple[str, ...], tp: int,
                           elem_bytes: float, dropout: bool = True, fp32_adapters: bool = False,
                           forward_only: bool = False, compiled: bool = False, rng_measured: bool = False) -> float:
    """Memory traffic per layer and micro-batch of peft's LoRA branch besides its two GEMMs
    (peft/tuners/lora/layer.py Linear.forward: result + lora_B(lora_A(dropout(x))) * scaling), in bytes, for
    inputs of `elem_bytes`. Per input value (k side): forward dropout reads x and writes x' and a 1-byte mask
    (peft's dropout is nn.Identity at lora_dropout 0), backward runs the mask over the branch's input gradient,
    and adds the branch's input gradient to the base layer's (read 2, write 1 values). With fp32 adapters under
    16-bit mixed precision (`fp32_adapters`: peft keeps adapter weights in fp32, `autocast_adapter_dtype`) peft
    casts x to fp32 before the dropout (`_cast_input_dtype`) and autocast casts the fp32 x' back to 16 bits for
    lora_A's matmul: (e + 4) + (4 + e) bytes each way, and the dropout runs on fp32 values. Per output value
    (n side): the scaling and the add read and write the branch and result (5 values), their backward 2.
    `forward_only`: the forward's share (the casts and the dropout one way, the scaling and the add), which a
    checkpointed layer runs again in backward. `compiled` (torch.compile: the Trainer's torch_compile, torchtune's
    per-layer compile): Inductor fuses the scaling and the add into one kernel that reads the base output and the
    branch and writes the sum in place (3 values, not 5; its backward keeps the scaling's 2 and the input
    gradient's add of 3): read off Inductor's generated code for torchtune's LoRALinear.forward at 1814feb17
    (`out + scaling * lora_b(lora_a(x))`: extern mm x3 then one cpp_fused__unsafe_view_add_mul kernel with an
    in/out pointer; backward cpp_fused_mul_view and cpp_fused_add_view), torch 2.13 on the CPU; Inductor's
    scheduler decides fusion before choosing the CPU or Triton backend. `rng_measured` (a device whose dropout rate
    is measured, the CPU: planner/timing.py prices the forward's draws, division and multiply at that rate, with
    `dropout` False here): torch's CPU dropout is not the fused native_dropout (Dropout.cpp `dropout` calls it only
    where `is_fused_kernel_acceptable`: CUDA, XPU, lazy, privateuse1) but `_dropout_impl`, `noise =
    empty_like(input); noise.bernoulli_(1 - p); noise.div_(1 - p); return input * noise`, so the noise has the
    input's dtype and autograd's MulBackward0 multiplies the branch's gradient by it in backward: 3 values of the
    operand's width per input value (read the gradient and the noise, write the product), which the measured
    forward rate leaves out (in a 2-rank LoRA step of benchmarks/rank_order.py, torch.profiler showed aten::mul
    27 ms higher with lora_dropout 0.05 than at 0: the forward's and the backward's multiply)."""
    # peft's ParamWrapper targets have no branch on the input (their update is folded into the weight, layer_gemms)
    e = elem_bytes
    a = 4.0 if fp32_adapters else e  # the dropout's operand
    casts = 2 * (e + 4.0) if fp32_adapters else 0.0
    drop = 2 * a + 1.0 if dropout else 0.0  # one way: read and write the operand, and the 1-byte mask
    k_bytes = casts + drop if forward_only else 2 * casts + 2 * drop + 3.0 * e
    if rng_measured and not forward_only:
        k_bytes += 3.0 * a  # the backward's grad * noise (MulBackward0 of `input * noise`)
    n_fwd = (3.0 if compiled else 5.0) * e
    n_bytes = n_fwd if forward_only else n_fwd + 2.0 * e
    total = sum(lin.layer_share * tokens * (k_bytes * lin.in_features + n_bytes * lin.out_features / tp)
                for lin in adapted_linears(m, lora_targets) if not lin.lora_param)
    return total


@lru_cache(maxsize=8192)
def lora_dropout_values(m: ModelSpec, tokens: int, lora_targets: tuple[str, ...]) -> float:
    """Values one layer's LoRA dropouts draw per micro-batch: every adapted linear has its own
    `lora_dropout` module, so q/k/v (and gate/up) each draw a mask over the same input (m x k each)."""
    return sum(lin.layer_share * tokens * lin.in_features for lin in adapted_linears(m, lora_targets)
               if not lin.lora_param)


@cache
def attention_shapes(m: ModelSpec) -> tuple[tuple[float, AttentionShape], ...]:
    """(share of the decoder layers, attention) per layer kind as transformers builds them (planner.model_layers:
    Gemma 3's sliding and global layers, gpt-oss's alternating windows, DeepSeek-V3's latent attention with query /
    key heads of 192 and value heads of 128); a hand-written family has one causal multi-head / grouped-query
    shape."""
    if m.layer_kinds:
        return tuple((k.count / m.num_layers, k.attention) for k in m.layer_kinds)
    return ((1.0, AttentionShape(heads=m.num_heads, kv_heads=m.num_kv_heads, qk_head_dim=m.head_dim,
                                 v_head_dim=m.head_dim)),)


# Bytes an attention kernel moves per element of one layer's b x heads x s x s scores outside its two batched GEMMs
# (Q K^T's write and P V's read of the scores, and in backward grad P's write, P's read for grad V and grad S's two
# reads, sit in those GEMMs' roofline: `attention_matmuls`), as (e, f) passes of the compute dtype's e bytes and of
# fp32, forward and backward. A checkpointed layer's recomputed forward moves the forward's passes again. The mask
# (b x 1 x s x s in transformers, L x S in PyTorch's math kernel) is not counted: it is read once per head from a
# tensor `heads` times smaller. Counted from the sources, and checked op by op with a dispatch mode over torch
# 2.13 and transformers 5.25 on the CPU (tests/planner/test_attention_passes.py):
# - "hf_eager": transformers' eager attention (modeling_llama.py eager_attention_forward, 4.36-5.25; the same ops
#   inline in LlamaAttention.forward in 4.31-4.35: `/ math.sqrt(head_dim)` for `* scaling`). Forward: the scaling
#   multiply (read, write), the mask add (read, write), `softmax(dtype=torch.float32)` and `.to(query.dtype)`;
#   dropout at p = 0 returns its input (aten/src/ATen/native/Dropout.cpp, `p == 0` returns the input). Torch's
#   softmax with a dtype (aten/src/ATen/native/SoftMax.cpp, `softmax(input_, dim_, dtype)`) runs its fused
#   half-to-float kernel only for fp16 on CUDA; bf16 (and fp16 on the CPU) is first copied to an fp32 tensor
#   (`input_.toType(dtype)`), so a 16-bit layer moves e + f (copy), 2f (softmax), f + e (cast back) where fp16 on
#   CUDA moves e + f (softmax) and f + e; in fp32 both casts are no-ops. Backward: the cast's grad back to fp32,
#   softmax's backward (reads grad and output, writes grad: fp32), the copy's grad to 16 bits, the multiply's.
# - "sdpa_math": PyTorch 2.0-2.4's `_scaled_dot_product_attention_math` (aten/src/ATen/native/transformers/
#   attention.cpp): q and k scaled before QK^T (head-sized tensors), the causal mask added in place
#   (`attn.add_(*attn_mask)`), `at::softmax` in the inputs' dtype, P V; backward: softmax's backward only. (From
#   2.5 it upcasts q, k and v to fp32, pytorch/pytorch#128922 of July 2024, unless allow_fp16_bf16_reduction_math_sdp
#   is set, #135964: fp32 GEMMs, fp32 add and softmax and a 16-bit copy of P, as torch 2.13's dispatch log shows. No
#   plan the planner makes reaches that kernel.)
# - "fused_softmax": one fused scale + mask + softmax kernel (Megatron-LM's FusedScaleMaskSoftmax, Narayanan et al.
#   2021, Sec. 4.2; megatron/model/fused_softmax.py): forward reads the scores and writes P, backward reads grad P
#   and P and writes grad S. torch.compile's Inductor fuses eager attention's scaling, mask add, casts and softmax
#   into its reduction kernels and is counted so (a looped reduction over long rows may read the scores more than
#   once: not measured); Liger's kernels (RMSNorm, RoPE, SwiGLU, the loss) leave transformers' attention alone.
# - "gpt2_eager": GPT-2's own attention in transformers 4.10-4.21 (GPT2Attention._attn, before SDPA: the form of
#   transformers 4.12, which DeepSpeedExamples' autotuning/hf/gpt2-large README names, divides by
#   `float(value.size(-1)) ** 0.5` and masks with `torch.where(causal_mask, attn_weights, self.masked_bias...)`;
#   later releases divide by `torch.full([], ...)` and mask with finfo.min, the same ops). Forward: the division
#   (read, write), torch.where against the boolean `bias` buffer (1 x 1 x s x s, not counted), the padding mask's
#   add (b x 1 x 1 x s: run_clm's tokenizer output keeps attention_mask, which GPT2Model turns into an additive
#   mask), `nn.Softmax` in the scores' own dtype (no fp32 upcast: a model run in 16 bits, as DeepSpeed's fp16
#   engine runs it without autocast, reads and writes 16 bits), `.type(value.dtype)` (a no-op in one dtype) and
#   attn_dropout at attn_pdrop = 0.1 in training: CUDA's fused dropout (aten/src/ATen/native/Dropout.cpp,
#   is_fused_kernel_acceptable -> native_dropout; torch 1.x's _fused_dropout) reads the scores and writes the
#   output and a one-byte mask (`SCORE_MASK_BYTES`). Backward: dropout's (grad and mask in, grad out), softmax's
#   (grad and output in, grad out), where's (grad in, grad out) and the division's; the add passes its gradient
#   through. fp16 on CUDA takes no half-to-float kernel here (softmax is given no dtype).
SCORE_PASSES: dict[tuple[str, str], tuple[tuple[int, int], tuple[int, int]]] = {
    ("hf_eager", "16-bit"): ((6, 4), (4, 5)),
    ("hf_eager", "fp16-cuda"): ((6, 2), (4, 3)),
    ("hf_eager", "fp32"): ((6, 0), (5, 0)),
    ("sdpa_math", "16-bit"): ((4, 0), (3, 0)),
    ("sdpa_math", "fp16-cuda"): ((4, 0), (3, 0)),
    ("sdpa_math", "fp32"): ((4, 0), (3, 0)),
    ("fused_softmax", "16-bit"): ((2, 0), (3, 0)),
    ("fused_softmax", "fp16-cuda"): ((2, 0), (3, 0)),
    ("fused_softmax", "fp32"): ((2, 0), (3, 0)),
    ("gpt2_eager", "16-bit"): ((10, 0), (9, 0)),
    ("gpt2_eager", "fp16-cuda"): ((10, 0), (9, 0)),
    ("gpt2_eager", "fp32"): ((10, 0), (9, 0)),
}
# (forward, backward) one-byte passes per score element besides SCORE_PASSES: attention dropout's mask, written in
# forward and read in backward (bool in native_dropout, uint8 in torch 1.x's _fused_dropout); the kernels at p = 0
# write none (Dropout.cpp: `p == 0` returns the input)
SCORE_MASK_BYTES: dict[str, tuple[int, int]] = {"gpt2_eager": (1, 1)}
FP32_BYTES = 4.0


def score_dtype(elem_bytes: float, fp16: bool, cuda: bool) -> str:
    """The SCORE_PASSES column of a run: fp32, fp16 on CUDA (softmax's half-to-float kernel), or 16 bits."""
    if elem_bytes >= FP32_BYTES:
        return "fp32"
    return "fp16-cuda" if fp16 and cuda else "16-bit"


def score_bytes_per_element(kernel: str, dtype: str, elem_bytes: float) -> tuple[float, float]:
    """(forward, backward) bytes one attention kernel moves per score element outside its GEMMs (SCORE_PASSES)."""
    (fe, ff), (be, bf) = SCORE_PASSES[(kernel, dtype)]
    fm, bm = SCORE_MASK_BYTES.get(kernel, (0, 0))
    return fe * elem_bytes + ff * FP32_BYTES + fm, be * elem_bytes + bf * FP32_BYTES + bm


def attention_kernel(attn: Attn, compiled: bool) -> str | None:
    """The score-materializing kernel behind an attention choice: eager runs transformers' ops, or one fused softmax
    under torch.compile; SDPA and FlashAttention keep the scores on chip (None)."""
    if attn is not Attn.eager:
        return None
    return "fused_softmax" if compiled else "hf_eager"


@lru_cache(maxsize=8192)
def host_ops_per_micro_batch(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...],
                             grad_ckpt: GradCkpt, lora_ops: bool = True) -> float:
    """Eager ops the host dispatches for one micro-batch: forward, backward (x2), recomputed forward; `lora_ops`
    False leaves out peft's (a device that measured their host time: `lora_host_s`)."""
    # adapted targets of a mean layer, each weighted by the share of the layers that hold it (adapted_per_layer)
    lora = adapted_count(m, lora_targets) if method is not Method.full and lora_ops else 0.0
    fwd = OPS_PER_LAYER_FORWARD + OPS_PER_LORA_LINEAR * lora
    passes = 3 + (1 if grad_ckpt is GradCkpt.full else 0)
    return layers * fwd * passes


def lora_host_s(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...], grad_ckpt: GradCkpt,
                gpu: GPUSpec) -> float:
    """Host seconds peft's adapted linears add to one micro-batch at the device's measured time per adapted linear
    (forward + backward: the count's three passes; a recomputed forward adds one more third); 0 where not measured
    (their ops are then in `host_ops_per_micro_batch`)."""
    if method is Method.full or not gpu.lora_linear_host_s:
        return 0.0
    passes = 3 + (1 if grad_ckpt is GradCkpt.full else 0)
    return layers * adapted_count(m, lora_targets) * gpu.lora_linear_host_s * passes / 3


def attention_memory_s(m: ModelSpec, kernel: str | None, dtype: str, b: int, s: int, layers: int, tp: int,
                       elem_bytes: float, gpu: GPUSpec) -> tuple[float, float]:
    """(forward, backward) memory time of a score-materializing kernel's passes over every layer's b x heads x s x s
    scores outside its GEMMs (SCORE_PASSES; each layer kind's heads, the full s x s: eager attention applies a window
    as a mask, after QK^T); 0 for SDPA's fused kernels and FlashAttention, which keep the scores on chip."""
    if kernel is None:
        return 0.0, 0.0
    elements = layers * sum(share * b * max(1, a.heads // tp) * s * s for share, a in attention_shapes(m))
    fwd_b, bwd_b = score_bytes_per_element(kernel, dtype, elem_bytes)
    return elements * fwd_b / gpu.elementwise_bytes_per_s, elements * bwd_b / gpu.elementwise_bytes_per_s


def causal_block_share(s: int, block: int = FLASH_BLOCK_ROWS) -> float:
    """Share of the s x s attention blocks a causal flash kernel computes: n(n+1)/2 of n^2 blocks of `block`
    rows (the diagonal blocks are computed whole)."""
    n = max(1, math.ceil(s / block))
    return (n + 1) / (2 * n)


@cache
def attended_block_share(s: int, window: int = 0, window_kind: str = "", block: int = FLASH_BLOCK_ROWS) -> float:
    """Share of the s x s blocks a flash kernel computes for a causal mask limited to a window: FlashAttention-2's
    local attention (`window_size`, Dao's flash_attn README "sliding window local attention") starts each block
    row of queries at the key block holding its first query's first visible key, max(0, q - window + 1), and
    ends at the diagonal; a chunked layer (Llama 4's local layers) attends within its chunk of `window` tokens.
    Without a window (or one no shorter than s) the causal share."""
    if window <= 0 or window >= s:
        return causal_block_share(s, block)
    n = math.ceil(s / block)
    computed = 0
    for i in range(n):
        first_query = i * block
        first_key = (first_query // window) * window if window_kind == "chunked" else \
            max(0, first_query - window + 1)
        computed += i - first_key // block + 1
    return computed / (n * n)


def _sequence_blocks(n_tokens: int, window: int, window_kind: str, block: int) -> float:
    """Blocks a flash kernel computes for one causal sequence of `n_tokens` (its own ceil(n / block)^2 grid)."""
    if n_tokens <= 0:
        return 0.0
    n = math.ceil(n_tokens / block)
    return attended_block_share(n_tokens, window, window_kind, block) * n * n


@cache
def document_block_share(s: int, doc_len: int, window: int = 0, window_kind: str = "",
                         block: int = FLASH_BLOCK_ROWS) -> float:
    """Share of a packed sequence's ceil(s / block)^2 blocks FlashAttention-2's varlen kernel computes when the s
    tokens hold documents of `doc_len` tokens, each attending only within itself. flash_attn_varlen_func
    (Dao's flash_attn README: "varlen", `cu_seqlens` marking each sequence's start) runs every document as a
    sequence of its own: its query blocks start at the document's first token, and each runs its own causal (or
    windowed) blocks; transformers takes that path when packed position_ids restart per document (TRL's
    padding_free collator, LLaMA-Factory's neat_packing: `_flash_attention_forward` with `cu_seq_lens`). Documents
    of the mean length are the approximation: floor(s / d) whole ones and the remainder as one more (a
    distribution with the same mean has a larger mean square, so this is the low end of the cost). Without
    documents (d >= s) the sequence's own share (`attended_block_share`)."""
    if doc_len <= 0 or doc_len >= s:
        return attended_block_share(s, window, window_kind, block)
    whole, rest = divmod(s, doc_len)
    blocks = whole * _sequence_blocks(doc_len, window, window_kind, block) + \
        _sequence_blocks(rest, window, window_kind, block)
    n = math.ceil(s / block)
    return blocks / (n * n)


def document_query_blocks(s: int, doc_len: int, block: int = FLASH_BLOCK_ROWS) -> int:
    """Query blocks (thread blocks per batch row and head) of a sequence of s tokens run as documents of `doc_len`:
    each document's ceil(d / block) (FlashAttention-2's varlen grid launches max_seqlen's blocks per document and
    returns at once from those past a document's end, which the count leaves out)."""
    if doc_len <= 0 or doc_len >= s:
        return math.ceil(s / block)
    whole, rest = divmod(s, doc_len)
    return whole * math.ceil(doc_len / block) + math.ceil(rest / block)


def sdpa_masks_window(a: AttentionShape, s: int) -> bool:
    """transformers hands SDPA an explicit mask for a layer whose window is shorter than the sequence
    (masking_utils._ignore_causal_mask_sdpa: `local_attention_size is not None and kv_length >=
    local_attention_size` keeps the mask), and with an attn_mask torch's SDPA cannot run its flash kernel: the
    memory-efficient kernel computes every block and masks it."""
    return 0 < a.window < s


def sdpa_masks_documents(s: int, doc_len: int) -> bool:
    """transformers hands SDPA a materialized (b, 1, s, s) mask for packed documents shorter than the sequence
    (masking_utils.create_causal_mask: a detected `packed_sequence_mask` sets allow_is_causal_skip = False;
    planner/activations.py packed_mask) and is_causal = False with it (integrations/sdpa_attention.py).
    FlashAttention-2 takes no mask, so torch 2.13's dispatch (priority flash, efficient, math, cuDNN:
    torch._C._get_sdp_priority_order) runs the memory-efficient kernel, whose loop over key blocks ends early only
    for its own causal mask type (custom_mask_type), which an explicit mask never sets: every block runs."""
    return 0 < doc_len < s


def flash_attention_s(m: ModelSpec, b: int, s: int, tp: int, gpu: GPUSpec, peak_flops_per_s: float,
                      efficiency: float, attn: Attn = Attn.flash, doc_len: int = 0) -> tuple[float, float]:
    """(forward, backward) seconds of one (mean) layer's FlashAttention-2 / SDPA core for a micro-batch: each layer
    kind's computed blocks' FLOPs, 2 s a (d_qk + d_v) per token at full s (Narayanan et al.'s count with
    multi-head latent attention's unequal head sizes), at the GPU's attention efficiency, the b x heads x
    ceil(s / 128) thread blocks filling the SMs in waves like GEMM tiles. FlashAttention-2 skips the blocks
    outside a layer's window (`attended_block_share`); SDPA with a window's explicit mask runs every block
    (`sdpa_masks_window`). Packed documents (`doc_len`) run as FlashAttention-2's varlen kernel, each document its
    own blocks (`document_block_share`); under SDPA they come as a materialized mask (`sdpa_masks_documents`), with
    which the memory-efficient kernel runs every block: no saving, and not the causal half either."""
    fwd_s = 0.0
    docs = doc_len if attn is Attn.flash else 0
    for share, a in attention_shapes(m):
        heads = max(1, a.heads // tp)
        masked = attn is Attn.sdpa and (sdpa_masks_window(a, s) or sdpa_masks_documents(s, doc_len))
        blocks = 1.0 if masked else document_block_share(s, docs, a.window, a.window_kind)
        fwd_flops = b * s * 2.0 * s * heads * (a.qk_head_dim + a.v_head_dim) * blocks
        tiles = b * heads * document_query_blocks(s, docs)
        waves = tiles / (math.ceil(tiles / gpu.sm_count) * gpu.sm_count) if gpu.sm_count > 0 else 1.0
        fwd_s += share * fwd_flops / (peak_flops_per_s * efficiency * waves)
    return fwd_s, FLASH_BACKWARD_OVER_FORWARD * fwd_s


# SDPA's CPU flash kernel (torch 2.13 aten/src/ATen/native/cpu/FlashAttentionKernel.cpp, `cpu_flash_attention`, which
# `_fused_sdp_choice_cpp` picks for fp32 / bf16 / fp16 inputs without dropout): each thread takes one (batch, head,
# block of q_split_size query rows); the query length sets the split (flash_attention_kernel_impl: 256 rows from 768
# queries, 64 from 192, else 32) and keys run in blocks of kv_split_size = 512 (at most the key length). Under a
# causal mask a query block stops at `num_keys = min(m + qBlockSize, kvSize)`, but the key block that holds its last
# key runs whole (`kvBlockSize = min(kvSplitSize, kvSize - n)`, then masked to -inf): at 128 tokens every query
# block computes all 128 keys, at 1024 three quarters of the square. Per computed score element the kernel runs
# QK^T and PV's multiply-adds (fp32 accumulation), the scale, max, exp and sum of its online softmax; the backward
# recomputes the scores and exp from the saved logsumexp (`cpu_flash_attention_backward`) and runs three more
# products (grad V, grad P, grad Q and K). The device fit times both per computed element (`sdpa_points`).
CPU_FLASH_KV_SPLIT = 512


def cpu_flash_q_split(s: int) -> int:
    """Query rows per block of SDPA's CPU flash kernel at query length s (flash_attention_kernel_impl)."""
    return 256 if s >= 768 else 64 if s >= 192 else 32


@cache
def cpu_flash_computed_scores(s: int, causal: bool = True) -> int:
    """Score elements SDPA's CPU flash kernel computes for one (batch, head) of s queries and s keys: per query
    block the key blocks up to its last visible key, each whole (the key length where shorter)."""
    if not causal:
        return s * s
    q_split, kv_split = min(cpu_flash_q_split(s), s), min(CPU_FLASH_KV_SPLIT, s)
    total = 0
    for m in range(0, s, q_split):
        rows = min(q_split, s - m)
        keys = min(m + rows, s)
        total += rows * min(math.ceil(keys / kv_split) * kv_split, s)
    return total


def _interpolate(points: tuple[tuple[float, float], ...], x: float, log_x: bool = False) -> float:
    """Piecewise-linear interpolation of (x, y) points sorted by x (in log x where asked), the end values beyond."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x <= x1:
            f = (math.log(x / x0) / math.log(x1 / x0)) if log_x else (x - x0) / (x1 - x0)
            return y0 + f * (y1 - y0)
    return points[-1][1]


def cpu_attention_element_s(gpu: GPUSpec, s: int, head_dim: float) -> tuple[float, float]:
    """(forward, backward) seconds per computed score element of SDPA's CPU flash kernel at length s and head size
    `head_dim` ((d_qk + d_v) / 2), from the device fit's points (length, head size, forward, backward): per head
    size interpolated in log length (the end values beyond the measured lengths), then linearly in the head size
    (the products' work grows with it, the softmax's does not), extrapolated linearly from the two nearest sizes and
    never below the smallest size's time."""
    by_dim: dict[float, list[tuple[float, float, float]]] = {}
    for length, dim, fwd, bwd in gpu.sdpa_points:
        by_dim.setdefault(float(dim), []).append((float(length), fwd, bwd))
    dims = sorted(by_dim)
    per_dim = []
    for d in dims:
        pts = sorted(by_dim[d])
        per_dim.append((d, _interpolate(tuple((x, f) for x, f, _ in pts), s, log_x=True),
                        _interpolate(tuple((x, b) for x, _, b in pts), s, log_x=True)))
    if len(per_dim) == 1:
        return per_dim[0][1], per_dim[0][2]
    i = max(0, min(len(per_dim) - 2, next((j - 1 for j, (d, _, _) in enumerate(per_dim) if d >= head_dim),
                                          len(per_dim) - 2)))
    (d0, f0, b0), (d1, f1, b1) = per_dim[i], per_dim[i + 1]
    t = (head_dim - d0) / (d1 - d0)
    return max(per_dim[0][1], f0 + t * (f1 - f0)), max(per_dim[0][2], b0 + t * (b1 - b0))


def cpu_sdpa_attention_s(m: ModelSpec, b: int, s: int, tp: int, gpu: GPUSpec, doc_len: int = 0) -> tuple[float, float]:
    """(forward, backward) seconds of one (mean) layer's SDPA on the CPU for a micro-batch of b sequences: each
    layer kind's b x heads x the CPU flash kernel's computed scores (`cpu_flash_computed_scores`; every score where
    transformers hands SDPA an explicit mask: a window shorter than s or packed documents, is_causal False) at the
    device fit's measured time per element (`cpu_attention_element_s`)."""
    fwd_s = bwd_s = 0.0
    for share, a in attention_shapes(m):
        heads = max(1, a.heads // tp)
        causal = not (sdpa_masks_window(a, s) or sdpa_masks_documents(s, doc_len))
        elements = b * heads * cpu_flash_computed_scores(s, causal)
        fwd_e, bwd_e = cpu_attention_element_s(gpu, s, (a.qk_head_dim + a.v_head_dim) / 2)
        fwd_s += share * elements * fwd_e
        bwd_s += share * elements * bwd_e
    return fwd_s, bwd_s


def attention_matmuls(m: ModelSpec, b: int, s: int, tp: int) -> tuple[Gemm, ...]:
    """Eager attention's two batched matmuls per layer kind, Q K^T (s x d_qk x s) and P V (s x s x d_v) over
    b x heads, weighted by the kind's share of the layers: the full s x s (eager attention masks a window after
    the product)."""
    out = []
    for share, a in attention_shapes(m):
        bh = b * max(1, a.heads // tp)
        out += [Gemm(s, a.qk_head_dim, s, bh, weight=share), Gemm(s, s, a.v_head_dim, bh, weight=share)]
    return tuple(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class FamilyOps:
    """How a family's modeling code runs the elementwise ops ftplan counts, where it differs from Llama's."""

    fp32_norm_weight: bool = False  # RMSNorm multiplies by its weight in fp32, then casts back
    gated_act_bytes: float = 5.0  # e-byte reads and writes per gated intermediate value (act(gate) * up: 5)
    fp32_routing: bool = False  # the router runs in fp32 and its top-k weights stay fp32
    fp32_rope: bool = False  # rotary embedding promotes q and k to fp32 (fp32 cos / sin) and casts back
    rope_cat: bool = False  # rotary embedding concatenates the rotated and passed-through parts
    complex_rope: bool = False  # rotary embedding as a complex multiply on fp32 copies of q and k
    # rotary embedding and a weightless q/k RMSNorm on the windowed (chunked) layers only; the other layers (NoPE)
    # scale the query by a temperature in fp32
    rope_on_windowed: bool = False


# transformers 5.25's modeling files: Gemma3RMSNorm ("Llama does x.to(float16) * w whilst Gemma3 is
# (x * w).to(float16)"), Olmo2RMSNorm and GptOssRMSNorm ("main diff with Llama") multiply by the weight in fp32;
# GptOssExperts._apply_gate clamps gate and up, scales, sigmoids and multiplies (2 + 2 + 2 + 2 + 3 + 2 + 3 = 16 per
# value); DeepseekV3TopkRouter casts the hidden states to fp32 and returns fp32 weights, so the experts' weighted
# outputs are restored and summed in fp32; Olmo2's apply_rotary_pos_emb computes in cos's fp32 and casts back (per
# value: q * cos (e + 4), rotate_half's neg and cat (2 e each), * sin (e + 4), the add (12), the cast (4 + e): 7 e +
# 24); Phi3's concatenates the rotated part with the rest (2 e); Llama4TextAttention rotates and q/k-normalizes
# (Llama4TextL2Norm, 2 e + 28 per value) only its chunked layers, as a complex multiply on fp32 copies
# (apply_rotary_emb: float, view_as_complex, * freqs_cis, type_as: 2 e + 16), and scales the query of the others by
# the temperature (2 e + 8).
FAMILY_OPS: dict[str, FamilyOps] = {
    "gemma": FamilyOps(fp32_norm_weight=True), "gemma2": FamilyOps(fp32_norm_weight=True),
    "gemma3": FamilyOps(fp32_norm_weight=True), "gemma3_text": FamilyOps(fp32_norm_weight=True),
    "olmo2": FamilyOps(fp32_norm_weight=True, fp32_rope=True), "phi3": FamilyOps(rope_cat=True),
    "llama4": FamilyOps(rope_on_windowed=True, complex_rope=True),
    "llama4_text": FamilyOps(rope_on_windowed=True, complex_rope=True),
    "gpt_oss": FamilyOps(fp32_norm_weight=True, gated_act_bytes=16.0),
    "deepseek_v3": FamilyOps(fp32_routing=True),
}
LLAMA_OPS = FamilyOps()


def norm_bytes(h: float, e: float, fused: bool, fp32_weight: bool = False) -> float:
    """Forward bytes per token of one RMSNorm over h values in a stream of e-byte values. transformers'
    LlamaRMSNorm.forward: to(float32) (read e, write 4), pow(2) (read 4, write 4), mean (read 4), x * rsqrt (read
    4, write 4), to(input dtype) (read 4, write e), weight * x (read e, write e); the casts are no-ops for an fp32
    stream. Gemma's, OLMo 2's and gpt-oss's norms multiply by the weight before the cast (`fp32_weight`: read 4,
    write 4). A fused kernel (Liger's, Inductor's) reads e and writes e."""
    if fused:
        return 2.0 * e * h
    casts = 0.0 if e >= 4 else (e + 4.0) * 2
    weight = 8.0 if fp32_weight else 2.0 * e
    return h * (casts + 8.0 + 4.0 + 8.0 + weight)


def layer_elementwise_bytes(m: ModelSpec, e: float, fused: bool, tp: int = 1) -> float:
    """Forward memory traffic per token of one (mean) decoder layer's elementwise ops, for e-byte activations. A
    hand-written family counts transformers' modeling_llama.py LlamaDecoderLayer: two norms; rotary embedding on q
    and k (apply_rotary_pos_emb: q * cos, rotate_half's neg and cat, * sin, the add: about 10 e per value); the
    attention output's transpose to contiguous (2 e per value); two residual adds (3 e per value); SwiGLU's
    act(gate) and * up (5 e per intermediate value; GeLU MLPs 2 e). MoE layers run `experts_per_token` MLPs per
    token. Fused kernels (`fused`: Liger or torch.compile) apply rotary in place (2 e) and SwiGLU in one pass
    (3 e). TP splits the attention and MLP parts, not the norms and residual stream. A model read from
    transformers counts each layer kind's own norms, attention and MLP (`kind_elementwise_bytes`)."""
    if m.layer_kinds:
        ops = FAMILY_OPS.get(m.model_type, LLAMA_OPS)
        return sum(k.count * kind_elementwise_bytes(k, m.hidden_size, e, fused, tp, ops)
                   for k in m.layer_kinds) / m.num_layers
    h = m.hidden_size
    q, kv = m.q_dim / tp, m.kv_dim / tp
    i = m.intermediate_size * (m.experts_per_token if m.is_moe else 1) / tp
    rope = 0.0 if m.model_type == "bloom" else (2.0 if fused else 10.0) * e * (q + kv)
    mlp = (3.0 if fused else 5.0) * e * i if m.gated_mlp else 2.0 * e * i
    return 2 * norm_bytes(h, e, fused) + rope + 2.0 * e * q + 2 * 3.0 * e * h + mlp


def _normed_values(norm: NormShape, a: AttentionShape, tp: int) -> float:
    """Values per token a norm runs over: Qwen3's and Gemma 3's per-head q/k norms (weight of one head's width)
    and OLMo 2's whole-projection ones both cover every query / key value; other norms their width."""
    leaf = norm.path.rsplit(".", 1)[-1]
    if leaf == "q_norm":
        return a.heads * a.qk_head_dim / tp
    if leaf == "k_norm":
        return a.kv_heads * a.qk_head_dim / tp
    return float(norm.width)


def _mla_rope_dim(kind: LayerKind) -> int:
    """Rotary width of multi-head latent attention: kv_a_proj_with_mqa writes the compressed key / value
    (kv_a_layernorm's width) and the shared rotary key (modeling_deepseek_v3.py: split into kv_lora_rank and
    qk_rope_head_dim)."""
    compressed = next((lin.out_features for lin in kind.linears if lin.path.endswith("kv_a_proj_with_mqa")), 0)
    latent = next((n.width for n in kind.norms if n.path.endswith("kv_a_layernorm")), 0)
    return compressed - latent if 0 < latent < compressed else kind.attention.qk_head_dim


def kind_elementwise_bytes(kind: LayerKind, h: int, e: float, fused: bool, tp: int = 1,
                           ops: FamilyOps = LLAMA_OPS) -> float:
    """Forward memory traffic per token of one layer of `kind`, as its transformers modeling code runs it: the
    layer's own norms (q/k norms, Gemma 3's and OLMo 2's sandwich norms, DeepSeek's latent norms, each as
    `norm_bytes`, the weight applied in fp32 where the family does); rotary embedding on the query and key heads
    (multi-head latent attention rotates only its rotary part, heads x r of the query and one shared r-wide key,
    then concatenates the query and assembles the key: 2 e per query / key value each, modeling_deepseek_v3.py;
    the families' own rotary variants in `FAMILY_OPS`); the attention output's transpose; two residual adds; the
    MLP (`mlp_elementwise_bytes`). Checked against a dispatch count of each family's layer
    (tests/profiler/test_elementwise_bytes.py)."""
    a = kind.attention
    q, k, o = a.heads * a.qk_head_dim / tp, a.kv_heads * a.qk_head_dim / tp, a.heads * a.v_head_dim / tp
    norms = sum(norm_bytes(_normed_values(n, a, tp), e, fused, ops.fp32_norm_weight) for n in kind.norms)
    casts = 2 * (e + 4.0) if e < 4 else 0.0  # an fp32 copy and the cast back, for a 16-bit stream
    rope_per_value = 2.0 * e if fused else casts + 8.0 if ops.complex_rope else \
        7.0 * e + 24.0 if ops.fp32_rope and e < 4 else 10.0 * e
    rope_per_value += 2.0 * e if ops.rope_cat and not fused else 0.0
    if ops.rope_on_windowed and a.window <= 0:
        rope = (2.0 * e + 8.0 if e < 4 else 3.0 * e) * q  # NoPE layer: the query's temperature
    elif ops.rope_on_windowed:
        weightless_norm = casts + 20.0
        rope = (rope_per_value + weightless_norm) * (q + k)
    elif a.kind == "mla":
        r = _mla_rope_dim(kind)
        rope = rope_per_value * (a.heads * r / tp + r) + 2.0 * e * 2 * q
    else:
        rope = rope_per_value * (q + k)
    expert_bias_out = sum(lin.out_features for lin in kind.linears if lin.role == "expert" and lin.bias)
    return norms + rope + 2.0 * e * o + 2 * 3.0 * e * h + \
        mlp_elementwise_bytes(kind.mlp, h, e, fused, tp, ops, expert_bias_out)


def mlp_elementwise_bytes(mlp: MlpShape, h: int, e: float, fused: bool, tp: int = 1, ops: FamilyOps = LLAMA_OPS,
                          expert_bias_out: int = 0) -> float:
    """Forward bytes per token of an MLP's elementwise ops. Activation: act(gate) * up, 5 e per intermediate value
    (3 e fused; 2 e ungated; gpt-oss's clamped gate `FAMILY_OPS`) for every expert a token runs. A routed MoE layer
    (transformers 5.25 integrations/moe.py grouped_mm_experts_forward, S = k rows per token) also gathers its
    tokens into expert order (reads the token, writes k rows: (1 + k) e h), weights the k outputs ((e + w) h k),
    restores their order (2 w h k) and sums them (w h k + w h), w = e, or 4 for routers that keep fp32 weights
    (then a cast back, (4 + e) h, and the router's fp32 copy of its input, (e + 4) h); each expert bias is
    gathered per row and added in place (4 e per output value and row); the router's softmax and top-k in fp32
    cost (e + 8) per expert. Llama 4's experts (modeling_llama4.py Llama4TextMoe) repeat every token for every
    expert, scale it, sum the outputs and add the shared expert's in place: (4 E + 5) e h. A shared expert runs
    its own activation and is added to the output (3 e h)."""
    act = (3.0 if fused else ops.gated_act_bytes) if mlp.gated else 2.0
    if mlp.kind != "moe":
        return act * e * mlp.intermediate / tp
    k = mlp.top_k
    if mlp.dispatch == "all_experts":
        out = act * e * mlp.intermediate * mlp.experts + (4 * mlp.experts + 5) * e * h
    else:
        w = 4.0 if ops.fp32_routing else e
        out = act * e * mlp.intermediate * k + (1 + k) * e * h + (e + w) * h * k + 3 * w * h * k + w * h + \
            4.0 * e * expert_bias_out * k + (e + 8.0) * mlp.experts
        if ops.fp32_routing and e < 4:
            out += 2 * (4.0 + e) * h
    if mlp.shared_intermediate:
        out += act * e * mlp.shared_intermediate / tp + (3.0 * e * h if mlp.dispatch != "all_experts" else 0.0)
    return out


def loss_elementwise_bytes(vocab: int, e: float, fused_loss: bool) -> float:
    """Forward plus backward memory traffic per token of the LM loss besides the head GEMM (transformers'
    ForCausalLMLoss: logits.float() (read e, write 4), cross_entropy's log_softmax (read 4, write 4) and its
    backward (read 4 twice, write 4), the gradient cast back (read 4, write e)); Liger's fused linear
    cross-entropy keeps the logits on chip chunk by chunk: about one read and write of e per value."""
    if fused_loss:
        return 2.0 * e * vocab
    casts = 0.0 if e >= 4 else 2 * (e + 4.0)
    return vocab * (casts + 8.0 + 12.0)
