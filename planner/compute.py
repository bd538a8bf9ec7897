"""Compute: FLOPs per training step and the time they take.

FLOPs follow Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters
Using Megatron-LM", arXiv 2104.04473), Sec. 5.1 and eq. 3: a matmul of an (m x k) by a (k x n)
matrix costs 2mkn FLOPs; per layer and token the forward pass runs 2 x (layer weights) FLOPs in its
linears plus 4 s q_dim in attention (Q K^T and the attention-weighted sum over all s positions; the
paper does not halve it for the causal mask); backward costs twice the forward, half for gradients
with respect to inputs and half for gradients with respect to weights; full recomputation adds one
forward. For a GPT layer (4h MLP, q_dim = h) this is eq. 3's 96 B s l h^2 (1 + s/(6h) + V/(16 l h))
with recomputation, 72 B s l h^2 (...) without.

Frozen weights (LoRA, QLoRA, --freeze-layers) skip the weight-gradient half of their backward, so
they cost 4x instead of 6x per parameter and token (Hu et al. 2021, LoRA, Sec. 4.2: no gradients for
the frozen weights); the LoRA branches themselves cost 6 x their parameters. Selective recomputation
re-runs the attention core only (Korthikanti et al. 2022, arXiv 2205.05198, Sec. 5 and eq. 8/9).
MoE layers count the experts a token visits (`experts_per_token`), as `params.active_params` does.

Symbols: s sequence length, V vocabulary, h hidden size; all FLOP counts are per token unless named
`*_per_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.gpus import GPUSpec
from planner.models import ModelSpec
from planner.params import lora_params, quantizable_params
from planner.states import stage_layers
from planner.strategy import Attn, GradCkpt, Method, Precision, Quant, Stage, TrainConfig

# Achievable fraction of the dense tensor-core peak for large GEMMs in a training step, keyed by GPU. Ampere: the
# "Maximum Achievable Matmul FLOPS" (MAMF) measured with torch.matmul over a search of shapes (S. Bekman,
# ml-engineering, compute/accelerator/README.md, "Maximum Achievable Matmul FLOPS comparison table", BF16): A100 SXM
# 271.2 of 312 TFLOP/s (86.9%); A800 is the same chip with cut NVLink. Hopper (H100, H800, H200: one GH100 die at
# 700 W): the "Maximum Sustainable Matmul FLOPS" (MSMF), the rate a matmul holds once the board sits at its power
# limit and its clock has settled below boost, which mamf-finder.py reports beside the boost-burst MAMF and which its
# author names the rate that "matches real training throughput" (a training step is one long saturated run): on an
# H200, five `--search auto` runs gave MSMF 743-746 TFLOP/s against MAMF 843-850 (ml-engineering
# compute/accelerator/benchmarks/README.md, "How MAMF and MSMF are defined"); 745 of 989.4 is 75.3%. The figure taken
# before, H100 SXM 794.5 (80.3%, "H200 is the same"), came from 100-iteration bursts: on that H200 a 0.3 s window read
# one shape at 745-752 that held 736-739 over 10 s. Per TFLOP Hopper has less power headroom than Ampere (700 W for
# 989 TFLOP/s against 400 W for 312); no sustained figure is published for the A100, which keeps its MAMF. The rest
# of a step is counted apart from this (planner/kernels.py): wave quantization of each GEMM's tiles, the elementwise
# ops' bytes at the memory bandwidth, attention at FlashAttention's own efficiency, host dispatch and framework
# hooks. Replaced by `Calibration.compute_efficiency` when a profile exists.
# - T4 (70 W): a user's cuBLAS fp16 4096^3 products, the mean of 100, ran at "about 24T" of its 65 TFLOP/s, which
#   the NVIDIA forum's answer puts down to power capping, "expected behavior for approximately continuous matrix
#   multiply operations on a T4" (forums.developer.nvidia.com/t/about-gpu-peak-performance/264462): a sustained
#   rate, 24/65.
# - V100 (SXM2, 125 TFLOP/s): cuBLAS tensor-core GEMM "up to 83 Tflops/s in mixed precision" of the 125 the paper
#   takes as the board's peak (Markidis et al. 2018, "NVIDIA Tensor Core Programmability, Performance & Precision",
#   IPDPSW 2018, abstract; CUDA 9's cuBLAS): 83/125, a figure from 2018's libraries, not a sustained window.
# - GPUs without a published figure (A10G, L40S, RTX 3090, RTX 4090) take the fallback: A100 PCIe's 81.1% in the
#   MAMF table, the lowest NVIDIA datacenter figure there, rounded down (0.80). The RTX 4090's one published search
#   (mag-/gpu_benchmark, mamf-finder with Optuna: 178.4 TFLOP/s at 14336x4096x4096) is a burst above the 165.2 its
#   datasheet counts at the 2520 MHz boost clock, so it says nothing of the rate a 450 W board sustains.
# - CPU: the peak is the fitted GEMM rate itself (planner/gpus.py, `ftplan profile calibrate --device`): 1.0.
HOPPER_SUSTAINED_MATMUL_FLOPS_PER_S = 745e12  # H200 MSMF, the middle of the five runs' 743-746 (above)
HOPPER_BF16_PEAK_FLOPS_PER_S = 989.4e12  # NVIDIA H100 / H200 SXM datasheet, dense
_HOPPER_EFFICIENCY = round(HOPPER_SUSTAINED_MATMUL_FLOPS_PER_S / HOPPER_BF16_PEAK_FLOPS_PER_S, 3)  # 0.753
T4_SUSTAINED_FP16_FLOPS_PER_S = 24e12  # NVIDIA forum 264462: "about 24T", power-capped at 70 W
T4_FP16_PEAK_FLOPS_PER_S = 65e12  # NVIDIA T4 datasheet, mixed precision
V100_CUBLAS_FP16_FLOPS_PER_S = 83e12  # Markidis et al. 2018: "up to 83 Tflops/s"
V100_FP16_PEAK_FLOPS_PER_S = 125e12  # NVIDIA Tesla V100 SXM2 datasheet, as the paper takes it
DEFAULT_COMPUTE_EFFICIENCY: dict[str, float] = {
    "A100-80G": 0.869, "A100-40G": 0.869, "A800": 0.869,
    "H100": _HOPPER_EFFICIENCY, "H800": _HOPPER_EFFICIENCY, "H200": _HOPPER_EFFICIENCY,
    "T4": round(T4_SUSTAINED_FP16_FLOPS_PER_S / T4_FP16_PEAK_FLOPS_PER_S, 3),  # 0.369
    "V100-32G": round(V100_CUBLAS_FP16_FLOPS_PER_S / V100_FP16_PEAK_FLOPS_PER_S, 3),  # 0.664
    "CPU": 1.0,
}
FALLBACK_COMPUTE_EFFICIENCY = 0.80


def compute_efficiency(gpu_name: str, calibrated: float | None = None, fitted: float | None = None) -> float:
    """Fraction of peak FLOP/s large GEMMs achieve: a calibration file's, else the device fit's
    (GPUSpec.gemm_efficiency), else the GPU's published figure."""
    if calibrated is not None:
        return calibrated
    if fitted is not None:
        return fitted
    return DEFAULT_COMPUTE_EFFICIENCY.get(gpu_name, FALLBACK_COMPUTE_EFFICIENCY)


def peak_flops_per_s(gpu: GPUSpec, precision: Precision) -> float:
    """Dense peak for the precision's matmuls: 16-bit tensor cores under *-mixed / bf16-true; fp32
    (torch leaves TF32 off for matmuls by default, torch.backends.cuda.matmul.allow_tf32 = False)."""
    if precision is Precision.fp32:
        return gpu.peak_fp32_flops_per_s
    if precision is Precision.fp16_mixed or not gpu.supports_bf16:
        return gpu.peak_fp16_flops_per_s
    return gpu.peak_bf16_flops_per_s


@lru_cache(maxsize=4096)
def layer_linear_flops(m: ModelSpec) -> float:
    """Forward FLOPs per token in one decoder layer's linears: 2 x the weights a token meets (an MoE
    layer runs `experts_per_token` of its `num_experts` copies)."""
    total = 0.0
    for lin in m.linears():
        # the experts each token runs through as transformers dispatches them (planner.model_layers: top-k of the
        # routed experts; Llama 4's experts run every token through every expert), weighted by the share of the
        # layers that hold the linear (DeepSeek-V3's dense-first layers)
        copies = lin.active_copies if lin.copies > 1 else 1
        total += 2.0 * copies * lin.in_features * lin.out_features * lin.layer_share
    return total


def attention_flops(m: ModelSpec, s: float) -> float:
    """Forward FLOPs per token of the attention core: Q K^T and scores x V, 2 x 2 x s x q_dim
    (Narayanan et al. 2021, eq. 3's s/(6h) term; no causal halving, as in the paper). A model read from
    transformers counts each layer's own head sizes: 2 s a (d_qk + d_v), which multi-head latent attention makes
    unequal (DeepSeek-V3: 192 and 128). Sliding windows are not taken off: only FlashAttention-2 skips the
    masked blocks; SDPA's memory-efficient kernel and eager attention compute the full s x s scores."""
    if m.layer_kinds:
        return sum(k.count * 2.0 * s * k.attention.heads * (k.attention.qk_head_dim + k.attention.v_head_dim)
                   for k in m.layer_kinds) / m.num_layers
    return 4.0 * s * m.q_dim


def attended_tokens(s: int, doc_len: int = 0) -> float:
    """Mean positions a token's attention spans in Narayanan's count (the full square, no causal halving): s for one
    sequence; for documents of `doc_len` tokens packed into s under a per-document mask, each document's own square,
    (floor(s/d) d^2 + r^2) / s with r the remainder (documents of the mean length, as planner/kernels.py
    document_block_share)."""
    if doc_len <= 0 or doc_len >= s:
        return float(s)
    whole, rest = divmod(s, doc_len)
    return (whole * doc_len * doc_len + rest * rest) / s


def head_flops(m: ModelSpec) -> float:
    """Forward FLOPs per token of the LM head (the logit layer, eq. 3's V/(16 l h) term)."""
    return 2.0 * m.vocab_size * m.hidden_size


@dataclass(frozen=True, slots=True)
class StepFlops:
    """FLOPs of one optimizer step for the whole job. `model` excludes recomputation (what MFU
    counts); `hardware` includes it (what the GPUs execute)."""

    model: float
    hardware: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Training:
    """What of the model trains and how: the fields of a TrainConfig the FLOP count reads."""

    method: Method = Method.full
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("all",)
    freeze_layers: int = 0
    grad_ckpt: GradCkpt = GradCkpt.none
    seq_len: int = 2048
    stage: Stage = Stage.sft
    doc_len: int = 0  # packed documents under a per-document mask (0: one sequence of seq_len)
    doc_kernel: bool = False  # the attention kernel skips the other documents' blocks (FlashAttention-2's varlen)


def document_kernel(cfg: TrainConfig) -> bool:
    """The attention kernel computes each packed document on its own: FlashAttention-2 (varlen), in 16 bits on a
    device that runs it (the GPU entries with an attention efficiency; planner/timing.py _pass_times)."""
    return bool(cfg.doc_len) and cfg.attn is Attn.flash and cfg.precision is not Precision.fp32 and \
        cfg.cluster.gpu.attention_efficiency is not None


def training_of(cfg: TrainConfig) -> Training:
    return Training(method=cfg.method, lora_r=cfg.lora_r, lora_targets=cfg.lora_targets,
                    freeze_layers=cfg.freeze_layers, grad_ckpt=cfg.grad_ckpt, seq_len=cfg.seq_len, stage=cfg.stage,
                    doc_len=cfg.doc_len or 0, doc_kernel=document_kernel(cfg))


@lru_cache(maxsize=4096)
def flops_per_token(m: ModelSpec, tr: Training, *, layers: float | None = None, head: bool = True) -> StepFlops:
    """Training FLOPs per token of one micro-batch over `layers` decoder layers (all by default) and the
    LM head. Forward F; backward = F (input gradients) + F of the trainable weights (weight gradients);
    the attention core's backward is twice its forward; recompute adds a forward (full) or the
    attention core (selective). Packed documents under a per-document mask (`tr.doc_len`): the model FLOPs
    (MFU's numerator) count each document's own attention square (`attended_tokens`), the convention's count
    for the attention the model computes (PaLM App. B's 12 L H Q T per token with T the span a token attends,
    here its document); the hardware FLOPs count the whole s x s unless the kernel skips the other documents
    (`tr.doc_kernel`: eager attention computes them and masks them after the product)."""
    model = _flops_at(m, tr, attention_flops(m, attended_tokens(tr.seq_len, tr.doc_len)), layers, head)
    if not tr.doc_len or tr.doc_kernel:
        return model
    executed = _flops_at(m, tr, attention_flops(m, tr.seq_len), layers, head)
    return StepFlops(model=model.model, hardware=executed.hardware)


def _flops_at(m: ModelSpec, tr: Training, att: float, layers: float | None, head: bool) -> StepFlops:
    """`flops_per_token` with the attention core's forward FLOPs per token given."""
    n_layers = m.num_layers if layers is None else layers
    lin = layer_linear_flops(m)
    full = tr.method is Method.full
    adapter = 0.0 if full else 2.0 * lora_params(m, tr.lora_r, tr.lora_targets) / m.num_layers
    trainable_share = 1.0 - min(tr.freeze_layers, m.num_layers) / m.num_layers if full else 0.0
    fwd_layer = lin + att + adapter
    # input gradients of every linear, weight gradients of the trainable ones, the attention core's
    # backward (2x its forward), and for LoRA the branches' input and weight gradients (2 x adapter)
    bwd_layer = lin + trainable_share * lin + 2.0 * att + 2.0 * adapter
    recompute = 0.0
    if tr.grad_ckpt is GradCkpt.full:
        recompute = fwd_layer
    elif tr.grad_ckpt is GradCkpt.selective:
        recompute = att
    model_flops = n_layers * (fwd_layer + bwd_layer)
    hf = head_flops(m) if head and tr.stage is not Stage.rm else 0.0
    # forward, input gradients, and weight gradients when the head trains (full fine-tuning, unless a
    # tied head shares the frozen embedding under --freeze-layers)
    head_trains = full and not (m.tie_embeddings and tr.freeze_layers)
    model_flops += hf + hf + (hf if head_trains else 0.0)
    ref_fwd = n_layers * (lin + att) + hf
    if tr.stage is Stage.dpo:
        model_flops += ref_fwd  # the frozen reference model's forward over the same sequences
    elif tr.stage is Stage.ppo:
        # critic trained like the actor; reference and reward models run forward only (TRL PPO).
        # Rollout generation is not counted: it is decoding, bound by memory bandwidth, not FLOPs.
        model_flops = 2.0 * model_flops + 2.0 * ref_fwd
        recompute *= 2.0
    return StepFlops(model=model_flops, hardware=model_flops + n_layers * recompute)


def rows_per_sample(cfg: TrainConfig) -> int:
    """Rows of the batch the model runs per sample: DPO and reward modelling score a chosen and a rejected answer
    (TRL's preference collators stack both halves into one batch: trl/trainer/dpo_trainer.py and
    reward_trainer.py DataCollatorForPreference, `input_ids = chosen + rejected`)."""
    return 2 if cfg.stage in (Stage.dpo, Stage.rm) else 1


def tokens_per_sample(cfg: TrainConfig) -> int:
    """Tokens through the model per sample: a row of seq_len each (`rows_per_sample`)."""
    return cfg.seq_len * rows_per_sample(cfg)


def model_flops_per_token(cfg: TrainConfig) -> float:
    """Model FLOPs (no recomputation) of the whole model per token of the sequences a step trains on:
    MFU's numerator per token (PaLM, Chowdhery et al. 2022, App. B, counted as in `flops_per_token`, with
    attention, frozen weights skipping their weight gradients, and DPO's chosen + rejected pair). The one
    definition the planner's MFU, the runner's metrics and the profiler's worker share."""
    return flops_per_token(cfg.model, training_of(cfg)).model * tokens_per_sample(cfg) / cfg.seq_len


def mfu(tokens_per_s: float, flops_per_token_: float, world_size: int, peak_flops_per_s_: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the devices' dense peak (0 without a peak)."""
    if peak_flops_per_s_ <= 0:
        return 0.0
    return tokens_per_s * flops_per_token_ / (world_size * peak_flops_per_s_)


def compute_time_s(flops: float, peak_flops_per_s: float, efficiency: float) -> float:
    """Time = FLOPs / (peak x achievable efficiency)."""
    return flops / (peak_flops_per_s * efficiency)


# Share of HBM bandwidth bitsandbytes' dequantization reaches in training, measured from litgpt's resource tables
# (tutorials/resource-tables.md of 10/20/2023: A100-SXM4-40GB, bitsandbytes 0.41.1, LoRA, micro-batch 1, no
# checkpointing). The time per iteration of bnb.nf4 minus that of the 16-bit run is the dequantization:
# Llama 2 7B 79.2 ms (3.68 - 2.36 min per 1k iterations), 13B 191.4 ms (6.38 - 3.19). The traffic below at the
# full 1,555 GB/s takes 37.5 and 73.4 ms: shares 0.47 and 0.38; 0.43 is their geometric mean
# (tests/validation/test_throughput_goldens.py holds both rows within 15%).
BNB_DEQUANT_BANDWIDTH_FRACTION = 0.43


def dequant_bytes_per_micro_batch(cfg: TrainConfig) -> float:
    """HBM traffic of bitsandbytes dequantization per micro-batch on one GPU: every quantized weight is
    read (0.5 B/param for nf4, 1 for int8) and written as a 16-bit copy that the matmul reads back
    (bitsandbytes `dequantize_4bit` before each matmul in MatMul4Bit.forward, and again for the input
    gradient in its backward), so (q + 2 + 2) bytes per weight and pass; forward, backward, and the
    recompute forward under checkpointing."""
    if cfg.quant is Quant.none:
        return 0.0
    q = 0.5 if cfg.quant is Quant.nf4 else 1.0
    passes = 2 + (1 if cfg.grad_ckpt is GradCkpt.full else 0)
    weights = quantizable_params(cfg.model) * stage_layers(cfg.model.num_layers, cfg.pp) / cfg.model.num_layers / cfg.tp
    return passes * weights * (q + 4.0)


def megatron_iteration_flops(B: int, s: int, L: int, h: int, V: int, recompute: bool = True) -> float:
    """Narayanan et al. 2021, eq. 3: FLOPs of one iteration of a GPT model with batch B, with full
    activation recomputation: 96 B s l h^2 (1 + s/(6h) + V/(16 l h)); without it, 72/96 of the layer term
    (the logit layer is not recomputed). L is the paper's l (layers)."""
    layer = (96 if recompute else 72) * B * s * L * h * h * (1 + s / (6 * h))
    logit = 6 * B * s * h * V
    return layer + logit
