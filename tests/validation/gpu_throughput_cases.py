"""Published fine-tuning (and FSDP pre-training) speeds on GPUs, each with the configuration behind it.

Every case names its source (page and table), the run's switches as the source states them, the figure and
its unit, and the planner configuration it maps to. Details a source leaves out are stated per case as
`assumed`; what the source's stack runs that the planner does not model is stated as `unmodelled`. Cases
that share `group` are one source's comparison of strategies on one setup: their order is scored too
(tests/validation/test_gpu_throughput_published.py).

Sources (7, 71 figures):
- Qwen (QwenLM/Qwen README.md, "Profiling of Memory and Speed"): HF Trainer + peft / DeepSpeed, A100-SXM4-80G,
  CUDA 11.8, PyTorch 2.0, flash-attention 2, batch 1 and gradient accumulation 8 (one iteration = 8 sequences
  per GPU, every one padded to the length: Qwen's finetune.py pads to model_max_length), gradient
  checkpointing, bf16; seconds per iteration at 256 ... 8192 tokens.
- fms-fsdp (foundation-model-stack/fms-fsdp README.md at commit cf6e42c, 2024-02-27, the eager figures before
  the May 2024 update to torch.compile): IBM's Llama 2 replicas pre-trained with FSDP1 (bf16 MixedPrecision,
  torch AdamW, SDPA flash attention, one micro-batch per step, sequence 4096) on 128 A100-80G with 400 Gbps
  per node and 96 H100 with 800 Gbps per node; tokens/s per GPU.
- chenyaofo, "Benchmark of LLaMA-7B models using deepspeed-based training code" (GitHub gist
  d4cd6a20ab4b95cb3a49491747e2139a): 8x A800, seq 4096, DeepSpeed 0.14.2, PyTorch 2.2; samples/s.
- Hugging Face blog "From DeepSpeed to FSDP and Back Again with Hugging Face Accelerate" (2024-06-13), Table 3:
  IBM Granite 7B (Llama 2 7B architecture) on four A100s, FSDP full shard vs DeepSpeed ZeRO-3, bf16 mixed,
  batch 8; tokens/s per device.
- DeepSpeed issue 3901 ("Training speed is slower and consumes more memory than FSDP"): Falcon-7B, 4k context,
  8x A100-40GB, FSDP vs ZeRO-2/3 with offloads; seconds per step.
- torchtune README "Optimization flags" (pytorch/torchtune 1814feb17, 2024-11-18): Llama 3.2 3B on one A100,
  batch 2, packed to 4096, bf16, one technique added per row; tokens/s per GPU (the memory set's rows); and its
  Llama 3.1 table (30b8519e8, 2024-09-24): 8B full, LoRA and QLoRA on one RTX 4090, batch 2, packed to 2048, compiled.
- Liger-Kernel README (linkedin/Liger-Kernel e85611c9, 2024-08-13, docs/images/e2e-tps.png): LLaMA 3-8B, FSDP1 on
  8 A100s, batch 8, checkpointing, 1K-16K tokens, with and without Liger's kernels; tokens/s (the memory set's runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from published_peaks import TORCHTUNE as TORCHTUNE_PEAKS  # the memory set's configurations
from published_peaks_sharded import LIGER as LIGER_PEAKS

from planner.build import build_config
from planner.gpus import GB, Cluster
from planner.kernels import attended_block_share, document_block_share
from planner.models import ModelSpec, spec_from_hf_config
from planner.strategy import (
    Attn,
    CrossEntropy,
    FsdpStrategy,
    GradCkpt,
    Kernels,
    Method,
    Offload,
    Optimizer,
    Precision,
    Stage,
    TrainConfig,
)
from planner.timing import step_time


@dataclass(frozen=True, kw_only=True)
class PublishedSpeed:
    id: str
    source: str  # the source's short name: the README table groups by it
    page: str  # page and table
    switches: str  # as the source states them
    unit: str  # "s/step" | "tokens/s/GPU" | "samples/s"
    published: float
    build: dict[str, Any]  # build_config keyword arguments
    hf_config: dict[str, Any] | None = None
    model: ModelSpec | None = None  # a test-local stand-in (see its comment)
    inter_node_bytes_per_s: float | None = None  # the source's network, per GPU, where it is not the GPU entry's
    attention_kernel: str | None = None  # planner/kernels.py SCORE_PASSES: the kernel eager attention stands in for
    group: str = ""  # one source's comparison of strategies on one setup
    counted_token_share: float = 1.0  # of the planned tokens, the share the source's tokens/s counts
    assumed: str = ""
    unmodelled: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> TrainConfig:
        cfg = build_config(**self.build, check=False)
        if self.hf_config is not None:
            cfg = replace(cfg, model=spec_from_hf_config(self.hf_config, name=self.id.split(":")[0]))
        if self.model is not None:
            cfg = replace(cfg, model=self.model)
        if self.inter_node_bytes_per_s is not None:
            gpu = replace(cfg.cluster.gpu, inter_node_bytes_per_s=self.inter_node_bytes_per_s)
            cfg = replace(cfg, cluster=Cluster(gpu=gpu, nodes=cfg.cluster.nodes,
                                               gpus_per_node=cfg.cluster.gpus_per_node))
        return cfg

    def predicted(self) -> float:
        """The planner's figure in the source's unit."""
        cfg = self.config()
        t = step_time(cfg, attention_kernel=self.attention_kernel)
        if self.unit == "s/step":
            return t.step_time_s
        if self.unit == "tokens/s/GPU":
            return t.tokens_per_s / cfg.world_size * self.counted_token_share
        if self.unit == "samples/s":
            return t.samples_per_s
        raise ValueError(self.unit)

    @property
    def faster_is_higher(self) -> bool:
        return self.unit != "s/step"

    def speed_error(self) -> float:
        """Predicted speed over published speed - 1 (+: the planner says faster)."""
        p = self.predicted()
        return (p / self.published if self.faster_is_higher else self.published / p) - 1.0


# --- Qwen (first generation) README --------------------------------------------------------------------------
# Model shapes: the Qwen technical report (Bai et al. 2023, arXiv 2309.16609, Table 1) and the models' config.json:
# QWen blocks are Llama-shaped (RMSNorm, RoPE, SwiGLU of width intermediate_size / 2, untied head) with one fused
# qkv projection (c_attn, h -> 3h), the attention output c_proj, and w1, w2, mlp.c_proj: five linears, the layout
# of the planner's "baichuan" family (W_pack, o_proj, gate/up/down); vocabulary 151,936 (1.8B, 7B) or 152,064 (14B,
# 72B). LoRA rows: finetune_lora_single_gpu.sh (r 64, alpha 16, dropout 0.05 on c_attn, c_proj, w1, w2: every
# linear of the block, c_proj matching both; no DeepSpeed). Full-parameter rows: finetune_ds.sh with
# finetune/ds_config_zero3.json (ZeRO-3, no offload, DeepSpeed's AdamW), 1.8B on 1 GPU, 7B on 2 GPUs. 72B:
# finetune_lora_ds.sh with --deepspeed finetune/ds_config_zero3.json on 4 GPUs (the README).
# Kernels: Qwen's remote modeling_qwen.py (`_import_flash_attn`) runs flash-attn's fused rotary kernel
# (flash_attn.layers.rotary.apply_rotary_emb_func, shipped with flash-attn >= 2.1.1) and its fused RMSNorm
# (flash_attn.ops.rms_norm, the csrc/layer_norm build the README's install steps list) whenever flash-attn is
# installed, as it is for these profiles ("Flash attention 2 is applied"): planned with fused elementwise kernels.
def _qwen_cfg(h: int, i: int, layers: int, heads: int, vocab: int) -> dict[str, Any]:
    return {"model_type": "baichuan", "vocab_size": vocab, "hidden_size": h, "intermediate_size": i,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "max_position_embeddings": 8192, "tie_word_embeddings": False}


QWEN_MODELS = {"1.8B": _qwen_cfg(2048, 5504, 24, 16, 151936), "7B": _qwen_cfg(4096, 11008, 32, 32, 151936),
               "14B": _qwen_cfg(5120, 13696, 40, 40, 152064), "72B": _qwen_cfg(8192, 24576, 80, 64, 152064)}
QWEN_SEQS = (256, 512, 1024, 2048, 4096, 8192)
_QWEN_PAGE = "QwenLM/Qwen README.md, Profiling of Memory and Speed"
_QWEN_BASE = dict(model="qwen2.5-7b", precision=Precision.bf16_mixed, attn=Attn.flash, grad_ckpt=GradCkpt.full,
                  micro_batch=1, grad_accum=8, kernels=Kernels.liger)
_QWEN_LORA = dict(method=Method.lora, lora_r=64, lora_alpha=16, lora_dropout=0.05)
# (size, method, GPUs, s/it at 256 ... 8192; None where the table has none)
QWEN_SPEEDS: tuple[tuple[str, str, int, tuple[float | None, ...]], ...] = (
    ("1.8B", "lora", 1, (1.0, 1.0, 1.1, 1.7, 3.3, 6.8)),
    ("7B", "lora", 1, (1.2, 1.5, 2.8, 5.2, 10.1, 21.3)),
    ("14B", "lora", 1, (1.6, 2.4, 4.4, 8.4, 17.0, 36.0)),
    ("1.8B", "full", 1, (2.1, 2.2, 2.2, 2.3, 2.8, 5.6)),
    ("7B", "full", 2, (4.0, 4.0, 4.5, None, None, None)),
    ("72B", "lora-zero3", 4, (17.6, 20.5, 29.4, 45.7, 83.4, 161.5)),
)


_QWEN_ADAPTERS = ("fp32 adapters under bf16 autocast, as peft 0.5 and >= 0.12 keep them (0.6-0.11 cast them to the "
                  "base weights' bf16); the README does not state peft's version")


def _qwen(size: str, method: str, gpus: int, seq: int, secs: float) -> PublishedSpeed:
    build: dict[str, Any] = {**_QWEN_BASE, "gpus": f"{gpus}xA100-80G", "seq_len": seq}
    if method == "full":
        build.update(method=Method.full, zero=3)
        what = f"full fine-tuning, DeepSpeed ZeRO-3 on {gpus} GPU{'s' if gpus > 1 else ''}"
    elif method == "lora-zero3":
        build.update(_QWEN_LORA, zero=3)
        what = f"LoRA r64 all linears + DeepSpeed ZeRO-3 on {gpus} GPUs"
    else:
        build.update(_QWEN_LORA)
        what = "LoRA r64 all linears, 1 GPU"
    return PublishedSpeed(
        id=f"qwen-{size}:{method}-seq{seq}", source="Qwen README", page=_QWEN_PAGE, unit="s/step", published=secs,
        switches=f"Qwen-{size} {what}, bf16, flash-attn 2, grad ckpt, bs 1, ga 8, seq {seq}", build=build,
        hf_config=QWEN_MODELS[size], group=f"qwen-1.8B-1gpu-seq{seq}" if size == "1.8B" else "",
        assumed="" if method == "full" else _QWEN_ADAPTERS,
        unmodelled="Qwen's SwiGLU (a1 * silu(a2)) runs eager where the planner's fused kernels fuse it too; "
                   "c_attn has a bias the stand-in lacks")


QWEN = [_qwen(size, method, gpus, seq, secs) for size, method, gpus, row in QWEN_SPEEDS
        for seq, secs in zip(QWEN_SEQS, row, strict=True) if secs is not None]
# Left out: "LoRA (emb)" (trains the embedding and head: no planner option); Q-LoRA (Qwen's Int4 models are GPTQ,
# run by auto-gptq's kernels, not bitsandbytes); "LoRA (multinode)" (2 nodes x 2 GPUs, ZeRO-2): each GPU does the
# 1-GPU LoRA row's work, yet every length is 1.74-2.1x slower, in proportion to the length (2.09 / 1.2 at 256,
# 37.4 / 21.3 at 8192), which no communication term explains: the run differs in something the README does not
# state.


# --- fms-fsdp (IBM), README at cf6e42c --------------------------------------------------------------------------
# main_training.py at that commit: FSDP1 (FlatParameter) with the bfSixteen MixedPrecision policy (bf16 params,
# reductions and buffers; fp32 sharded master weights), the transformer-block wrapping policy, limit_all_gathers,
# torch.optim.AdamW, clip_grad_norm_ every step, no accumulation, no compile (use_torch_compile=False in
# scripts/*.sh), SDPA (flash) attention. Models (fms_fsdp/utils/config_utils.py): 7b = Llama 2 7B, 34b = 8192 wide,
# 48 layers, 64 heads / 8 KV heads, MLP 22016 (Code Llama 34B's shape), 70b = Llama 2 70B; vocabulary 32,000.
# "A100 80G 128 GPUs with 400Gbps" / "H100 96 GPUs with 800 Gbps": per node, so 50 / 100 GB/s shared by 8 GPUs.
# The figure (fms_fsdp/utils/train_utils.py `train`): every step's tokens since the loop began over the wall time,
# divided by the world size; each step ends in host syncs (loss.item(), clip_grad_norm_().item()) and the loader
# runs in the main process (dataloader_utils.py: num_workers=0), a pyarrow slice per 4,097-token line: milliseconds.
_FMS_PAGE = "foundation-model-stack/fms-fsdp README.md (cf6e42c, 2024-02-27), Training throughput benchmarks"
_FMS_34B = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 8192, "intermediate_size": 22016,
            "num_hidden_layers": 48, "num_attention_heads": 64, "num_key_value_heads": 8,
            "max_position_embeddings": 16384, "tie_word_embeddings": False}
# (size, sharding, checkpointing, batch, A100 tokens/s/GPU, H100 tokens/s/GPU)
FMS_SPEEDS = (("7b", FsdpStrategy.hybrid_shard, False, 2, 3650.0, 7500.0),
              ("34b", FsdpStrategy.full_shard, True, 2, 700.0, 1550.0),
              ("70b", FsdpStrategy.full_shard, True, 2, 370.0, 800.0))
# Left out: 13b "Selective AC" (fms-fsdp's selective_checkpointing checkpoints a share of the blocks; the share
# the table's run used is not stated, and scripts/13b.sh of that week turns checkpointing off).


def _fms(size: str, sharding: FsdpStrategy, ckpt: bool, batch: int, gpu: str, gpus: int, tps: float,
         node_gbps: float) -> PublishedSpeed:
    model = {"7b": "llama-2-7b", "34b": "llama-2-7b", "70b": "llama-2-70b"}[size]
    build = dict(model=model, gpus=f"{gpus}x{gpu}", method=Method.full, precision=Precision.bf16_mixed,
                 fsdp=sharding, fsdp_version=1, micro_batch=batch, grad_accum=1, seq_len=4096,
                 grad_ckpt=GradCkpt.full if ckpt else GradCkpt.none, attn=Attn.sdpa, stage=Stage.pt)
    return PublishedSpeed(
        id=f"fms-{size}:{gpu}x{gpus}", source="fms-fsdp (IBM)", page=_FMS_PAGE, unit="tokens/s/GPU", published=tps,
        switches=f"Llama 2 {size} pre-training, FSDP1 {sharding.value}, AC {'on' if ckpt else 'off'}, bs {batch}, "
                 f"seq 4096, {gpus} {gpu}, {node_gbps:g} Gbps per node",
        build=build, hf_config=_FMS_34B if size == "34b" else None,
        inter_node_bytes_per_s=node_gbps / 8 * GB / 8, unmodelled="IBM's own FMS Llama modules, not transformers'")


FMS = [_fms(size, shard, ckpt, bs, gpu, n, tps, gbps) for size, shard, ckpt, bs, a100, h100 in FMS_SPEEDS
       for gpu, n, tps, gbps in (("A100-80G", 128, a100, 400.0), ("H100", 96, h100, 800.0))]


# --- chenyaofo gist: LLaMA-7B on 8x A800 ------------------------------------------------------------------------
# (ZeRO stage, checkpointing, optimizer offload, parameter offload, micro-batch, global batch, samples/s)
GIST = [
    (2, False, False, False, 1, 64, 5.33), (2, True, False, False, 1, 64, 4.19), (2, True, True, False, 1, 64, 1.81),
    (2, True, False, False, 4, 64, 4.69), (3, False, False, False, 2, 64, 4.95), (3, True, False, False, 2, 64, 4.45),
    (3, True, True, False, 2, 64, 2.05), (3, True, True, True, 4, 64, 2.06), (3, True, False, False, 8, 64, 4.73),
    (3, True, False, False, 8, 128, 4.32),
]
_GIST_PAGE = "gist chenyaofo/d4cd6a20ab4b95cb3a49491747e2139a (DeepSpeed 0.14.2, PyTorch 2.2)"


def _gist(z: int, ckpt: bool, opt_off: bool, param_off: bool, mb: int, gbs: int, sps: float) -> PublishedSpeed:
    offload = Offload.all if param_off else Offload.optimizer if opt_off else Offload.none
    name = f"z{z}{'-ckpt' if ckpt else ''}{'-offopt' if opt_off else ''}{'-offparam' if param_off else ''}-mb{mb}" \
           f"-gbs{gbs}"
    return PublishedSpeed(
        id=f"gist-llama7b:{name}", source="chenyaofo gist", page=_GIST_PAGE, unit="samples/s", published=sps,
        switches=f"LLaMA-7B full fine-tuning, 8x A800, seq 4096, ZeRO-{z}, checkpointing {ckpt}, offload "
                 f"optimizer {opt_off} / parameters {param_off}, micro-batch {mb}, global batch {gbs}",
        build=dict(model="llama-2-7b", gpus="8xA800", method=Method.full, precision=Precision.bf16_mixed, zero=z,
                   offload=offload, micro_batch=mb, grad_accum=gbs // (8 * mb), seq_len=4096,
                   grad_ckpt=GradCkpt.full if ckpt else GradCkpt.none),
        group="gist-llama7b-8xA800", assumed="SDPA attention (the gist's transformers default)")


GIST_CASES = [_gist(*row) for row in GIST]


# --- Hugging Face blog: FSDP vs DeepSpeed ZeRO-3, Granite 7B on 4 A100 ---------------------------------------------
# Table 3: tokens/s/device 3158.7 (FSDP, 10.4 s per step) and 3094.5 (DeepSpeed, 10.6 s): 3158.7 x 10.4 = 32,850
# tokens per device and step = 8 sequences of 4096. Accelerate 0.30 (FSDP1, the "aligned" fp32 master mode),
# DeepSpeed 0.14 (accelerate issue 2624's configs: FULL_SHARD with BACKWARD_PRE prefetch; ZeRO-3 without offload).
_BLOG_PAGE = "huggingface.co/blog/deepspeed-to-fsdp-and-back, Table 3"


def _blog(engine: str, tps: float) -> PublishedSpeed:
    kw: dict[str, Any] = {"fsdp": FsdpStrategy.full_shard, "fsdp_version": 1} if engine == "fsdp" else {"zero": 3}
    return PublishedSpeed(
        id=f"hf-blog-granite7b:{engine}", source="HF accelerate blog", page=_BLOG_PAGE, unit="tokens/s/GPU",
        published=tps, switches=f"Granite 7B (Llama 2 7B shape), 4x A100, {engine}, bf16 mixed, batch 8",
        build=dict(model="llama-2-7b", gpus="4xA100-80G", method=Method.full, precision=Precision.bf16_mixed,
                   micro_batch=8, grad_accum=1, seq_len=4096, grad_ckpt=GradCkpt.full, attn=Attn.sdpa, **kw),
        group="hf-blog-granite7b", assumed="sequence 4096 (from tokens/s x step time = 8 x 4096), A100 80GB, "
                                           "gradient checkpointing (8 x 4096 tokens of a 7B model do not fit without)")


BLOG = [_blog("fsdp", 3158.7), _blog("zero3", 3094.5)]


# --- DeepSpeed issue 3901: Falcon-7B, 4k context, 8x A100-40GB ---------------------------------------------------
# Falcon-7B (tiiuae/falcon-7b config.json): hidden 4544, 32 layers, 71 heads of 64, multi-query attention (one K/V
# head), a 4h GELU MLP (18,176), vocabulary 65,024, tied embeddings. The planner has no Falcon layout; the stand-in
# below is Llama-shaped with the same matmul FLOPs per token (q 4544, k and v 64 each, output 4544; a gated MLP of
# width 8h/3 = 12,117 has 3 h x 12,117 weights, Falcon's two 4h matrices 8 h^2).
FALCON_7B = ModelSpec(name="falcon-7b (Llama-shaped stand-in)", model_type="llama", vocab_size=65024,
                      hidden_size=4544, intermediate_size=12117, num_layers=32, num_heads=71, num_kv_heads=1,
                      head_dim=64, tie_embeddings=True, max_seq_len=4096, decoder_layer_class="FalconDecoderLayer")
_DS3901_PAGE = "deepspeedai/DeepSpeed issue 3901 (2023-07-07), the benchmark table"
# Attention: SDPA's math kernel (planner/kernels.py SCORE_PASSES "sdpa_math"). In July 2023 Falcon-7B ran through
# its remote RW code (tiiuae/falcon-7b modelling_RW.py; transformers' own Falcon came with 4.33 in September
# 2023), whose Attention.forward hands F.scaled_dot_product_attention its 71 query heads and the one key / value head of
# multi-query attention as they are (`num_kv = 1`: key and value reshaped to (b, 1, s, 64), not expanded), with
# is_causal=True. PyTorch 2.0.1, the release of that summer (2.1 came in October), runs its flash and memory-efficient
# kernels only when query, key and value have the same number of heads (aten/src/ATen/native/transformers/cuda/
# sdp_utils.h at v2.0.1, e9ebda29: check_equal_batch_size_and_num_heads is a constraint of both use_flash_attention
# and use_mem_efficient_attention; 2.1-2.4 keep the check for dense inputs), so every layer falls back to the math
# kernel: the full b x 71 x s x s scores, their softmax and the product with V, in bf16. Its passes over the scores
# beside the two GEMMs: the mask's in-place add and softmax forward, softmax's backward (7 of 16 bits; transformers'
# eager attention, the planner's Attn.eager, moves 28 bytes forward and 28 backward per score element in bf16).
# Checkpointing: on that path each layer keeps its 71 x 4096 x 4096 bf16 probabilities for backward (2.4 GB; 76 GB
# over 32 layers), so no run of the table fits a 40 GB card without activation checkpointing, and all four
# checkpoint. (An earlier reading of the memory row, planned with flash attention, put checkpointing on FSDP only.)
# (label, engine keywords, checkpointing, seconds)
DS3901 = (("fsdp", {"fsdp": FsdpStrategy.full_shard, "fsdp_version": 1}, GradCkpt.full, 2.93),
          ("z2-offload-all", {"zero": 2, "offload": Offload.optimizer}, GradCkpt.full, 9.60),
          ("z3", {"zero": 3}, GradCkpt.full, 2.86),
          ("z3-offload-all", {"zero": 3, "offload": Offload.all}, GradCkpt.full, 13.70))


def _ds3901(label: str, kw: dict[str, Any], ckpt: GradCkpt, secs: float) -> PublishedSpeed:
    return PublishedSpeed(
        id=f"ds3901-falcon7b:{label}", source="DeepSpeed issue 3901", page=_DS3901_PAGE, unit="s/step",
        published=secs, switches=f"Falcon-7B fine-tuning, 4k context, 8x A100-40GB, {label}",
        build=dict(model="llama-2-7b", gpus="8xA100-40G", method=Method.full, precision=Precision.bf16_mixed,
                   micro_batch=1, grad_accum=1, seq_len=4096, grad_ckpt=ckpt, attn=Attn.eager, **kw),
        model=FALCON_7B, group="ds3901-falcon7b", attention_kernel="sdpa_math",
        assumed="micro-batch 1 and no accumulation: the attached script is not readable offline; PyTorch 2.0.x, so "
                "SDPA runs its math kernel on the RW code's one key / value head (above): planned as eager attention "
                "(the full s x s GEMMs, the scores kept for backward) with the math kernel's own passes over the "
                "scores (planner/kernels.py SCORE_PASSES 'sdpa_math')",
        unmodelled="Falcon's LayerNorm, GELU MLP and parallel attention stood in by a Llama-shaped layer of the same "
                   "matmul FLOPs")


DS3901_CASES = [_ds3901(*row) for row in DS3901]
# Left out: "Stage-3 offload params" (6.05 s): parameters offloaded without the optimizer is not a planner option.

CASES: list[PublishedSpeed] = [*QWEN, *FMS, *GIST_CASES, *BLOG, *DS3901_CASES]


# --- torchtune README, "Optimization flags" (pytorch/torchtune README.md at 1814feb17, 2024-11-18) ----------------
# The memory set's rows (tests/validation/published_peaks.py TORCHTUNE: Llama 3.2 3B, one A100 80GB, batch 2, packed
# to 4096 tokens, bf16 weights and optimizer states, fused torch AdamW, no accumulation; LoRA r64 alpha 128 on q, v,
# output and the MLP, dropout 0), planned with the same configurations, and the "Tokens Per Second" column beside
# their "Peak Memory Active". The recipes log tokens_per_second_per_gpu = the step's tokens whose label is not
# ignore_index over the step's wall time from one optimizer step to the next (recipes/full_finetune_single_device.py
# and lora_finetune_single_device.py at 1814feb17). Activation offloading is on in the LoRA and QLoRA rows: the
# table adds "+ Activation Offloading" before them and its command for the final row passes
# enable_activation_offloading=True with optimizer_in_bwd=False and torch.optim.AdamW.
# Attention: a packed batch carries torchtune's block-causal BlockMask (data/_collate.py padded_collate_packed ->
# packed_block_causal_mask), so on an A100 every row runs flex_attention, compiled whatever `compile` says
# (modules/attention_utils.py: flex_attention_compiled, utils/_import_guard.py _SUPPORTS_FLEX_ATTENTION = CUDA and
# sm >= 7.5), over each Alpaca sample's own causal block rather than the whole 4096-token pack. Planned as packed
# documents (`doc_len`) under FlashAttention-2's varlen kernel, the planner's one attention that skips the other
# documents' blocks (planner/kernels.py document_block_share): flex's BlockMask works on the pack's own 128 x 128
# blocks, so a sample straddling a block boundary costs blocks on both sides (kernels.attended_block_share with a
# "chunked" window of the document length: 0.062 of the 4096-token pack's blocks at 130-token documents, 0.060 at
# 120; tests/planner/test_documents.py), where varlen over documents of the mean length computes 0.092 at 130 and
# 0.034 at 120 (a document of 129 tokens or more runs two query blocks) and causal attention over the pack 0.516:
# under 1% of a step either way (the attention core was 9-13% of each A100 step at the causal count).
# Documents: the recipes' dataset is torchtune.datasets.alpaca_dataset (recipes/configs/llama3_2/
# 3B_full_single_device.yaml: tatsu-lab/alpaca, 52,002 samples, about 40% with an input: the Stanford Alpaca
# datasheet), each sample one document of the pack (datasets/_packed.py PackedDataset: greedy, no sample split across
# packs). Its mean length in Llama 3 tokens is an estimate, not a count (no copy of the data or of the tokenizer is
# readable offline): Wang et al. 2023 ("How Far Can Camels Go?", arXiv 2306.04751, Table 1) count Alpaca's prompts
# at 27.8 and completions at 64.6 LLaMA tokens on average, 92.4; Llama 3's tokenizer writes English text in up to
# 15% fewer tokens than Llama 2's (the same 32K vocabulary as LLaMA's; Meta's Llama 3 announcement), 79-92; torchtune's
# AlpacaToMessages wraps each sample in the Stanford prompt (about 41 tokens with an input, 27 without, counted at a
# word or punctuation mark per token: 33 on average) as a user message and the output as an assistant message; the
# Llama 3 tokenizer adds BOS and EOS and, around each message, a header and its end (<|start_header_id|>, the role,
# <|end_header_id|>, "\n\n", <|eot_id|>: 5 tokens, 10 per sample; models/llama3/_tokenizer.py tokenize_message):
# 124-137 tokens, 130 taken. The planned rows step by 1.2-1.6 points between 128 and 129 tokens (one 128-row block
# per document below, two from 129: the mean-length stand-in is not smooth there) and by under 0.1% elsewhere in
# that range: the source's median error is +7.0% at 124-128 and +5.5% at 129-137. The packs' tail padding is planned
# as a short document.
TT_DOC_LEN = 130
# What the A100 table's tokens/s counts: from 2024-10-25 (#1875, 23c8829ac, before the table's 1814feb17) the recipes
# count the tokens whose label is not ignore_index. Each sample's BOS and EOS are always masked (llama3/_tokenizer.py
# tokenize_messages: "bos and eos are always masked"; with alpaca_dataset's default train_on_input=True nothing else
# of a sample is), and PackedDataset pads each pack's labels with CROSS_ENTROPY_IGNORE_IDX after its last sample
# (datasets/_packed.py _pad_pack; split_across_pack=False: a sample that does not fit starts the next pack), about
# half a sample at these lengths (the low end: a spread of lengths leaves more). The Llama 3.1 table (30b8519e8)
# predates #1875: its recipes count batch["tokens"].numel(), every token.
TT_MASKED_PER_DOC = 2


def _tt_counted_share(seq_len: int) -> float:
    """Of a pack's seq_len planned tokens, the share torchtune's tokens_per_second_per_gpu counts (1814feb17)."""
    return (1.0 - TT_DOC_LEN / 2 / seq_len) * (1.0 - TT_MASKED_PER_DOC / TT_DOC_LEN)
_TT_PAGE = "pytorch/torchtune README.md (1814feb17), Optimization flags: Tokens Per Second"
_TT_ASSUMED = ("torchtune counts the tokens whose label is not ignore_index: compared at that count, each sample's "
               "BOS and EOS and a pack's padding after its last sample (about half a sample) left out (3.1% of the "
               "4096); documents of 130 Llama 3 tokens, estimated from Wang et al. 2023's Alpaca lengths (see "
               "TT_DOC_LEN)")


def _tt_unmodelled(seq_len: int) -> str:
    return ("flex_attention's BlockMask over the packs' documents, planned as FlashAttention-2's varlen kernel over "
            f"documents of the mean length (flex computes {attended_block_share(seq_len, TT_DOC_LEN, 'chunked'):.3f} "
            f"of the {seq_len}-token pack's blocks where varlen computes "
            f"{document_block_share(seq_len, TT_DOC_LEN):.3f}: under 1% of a step); torchtune's own modules (its "
            "RMSNorm and RoPE upcast to fp32 in eager), planned with transformers' elementwise traffic")


# (the memory set's row, tokens/s per GPU)
TORCHTUNE_TPS = (("full+packed", 7075.0), ("full+packed+compile", 8998.0), ("full+packed+compile+chunked-ce", 9174.0),
                 ("full+packed+compile+chunked-ce+ac", 7210.0), ("lora+packed+compile+chunked-ce+ac+offload", 8210.0),
                 ("qlora+packed+compile+chunked-ce+ac+offload", 8035.0))
# Left out: "Baseline" (unpacked: the padded length of each batch comes from the data), the rows that fuse the
# optimizer step into backward (optimizer_in_bwd: "+ Fuse optimizer step into backward", "+ Activation Offloading",
# "+ 8-bit AdamW"), which the memory set leaves out too.


def _torchtune_speed(row: str, tps: float) -> PublishedSpeed:
    peak = next(p for p in TORCHTUNE_PEAKS if p.id == f"torchtune:{row}")
    qlora = row.startswith("qlora")
    return PublishedSpeed(
        id=f"torchtune-llama3.2-3b:{row}", source="torchtune README", page=_TT_PAGE, unit="tokens/s/GPU",
        published=tps, switches=f"Llama 3.2 3B, 1x A100 80GB, bs 2, seq 4096, bf16, {row}",
        build={**peak.build, "attn": Attn.flash, "doc_len": TT_DOC_LEN},
        group="torchtune-llama3.2-3b-a100", assumed=_TT_ASSUMED, counted_token_share=_tt_counted_share(4096),
        unmodelled=_tt_unmodelled(4096) + ("; torchao's NF4 tensors (torchtune's QLoRA), planned at bitsandbytes' "
                                     "dequantization rate" if qlora else ""))


TORCHTUNE_SPEEDS = [_torchtune_speed(row, tps) for row, tps in TORCHTUNE_TPS]

# The README's Llama 3.1 table (pytorch/torchtune README.md at 30b8519e8, 2024-09-24): "batch size 2 (without gradient
# accumulation), a dataset packed to sequence length 2048, and torch compile enabled", tokens/s "measured over one
# full training epoch" (the first step's compilation included: a minute or two of an epoch of about an hour). The
# rest from the recipes' configs at that commit (recipes/configs/llama3_1/8B_{full,lora,qlora}_single_device.yaml):
# bf16 weights, activation checkpointing on, CEWithChunkedOutputLoss; full: bitsandbytes' PagedAdamW8bit with
# optimizer_in_bwd (the step runs per parameter inside backward: the same optimizer work, planned as a step after
# it); LoRA: q and v, rank 8, alpha 16, dropout 0, fused torch AdamW; QLoRA: q, k, v, output and the MLP, rank 8,
# alpha 16, torchao NF4 base weights. The three single-GPU rows on the RTX 4090 (the planner has no RTX A6000 entry:
# its two rows are left out; the 8x A100 rows are left out too: the distributed recipes of that commit log
# tokens_per_second_per_gpu from each rank's own tokens, while 3,497 tokens/s per A100 for Llama 3.1 70B LoRA would
# need 1.5 PFLOP/s each, so the table's unit for them is not the recipe's). The packs hold the same Alpaca samples
# (the configs' alpaca_dataset) under flex_attention's document mask, planned as above (TT_DOC_LEN).
_TT31_PAGE = "pytorch/torchtune README.md (30b8519e8), Llama 3.1 memory and training speed table"
_TT31 = dict(model="llama-3.1-8b", gpus="1xRTX4090", precision=Precision.bf16_true, micro_batch=2, grad_accum=1,
             seq_len=2048, attn=Attn.flash, doc_len=TT_DOC_LEN, torch_compile=True, cross_entropy=CrossEntropy.chunked,
             grad_ckpt=GradCkpt.full)
_TT31_LORA = dict(lora_r=8, lora_alpha=16, lora_dropout=0.0, optimizer=Optimizer.adamw, fused_adamw=True)
# (method, tokens/s, build keywords)
TORCHTUNE31_TPS = (
    ("full", 1650.0, dict(method=Method.full, optimizer=Optimizer.paged_adamw_8bit)),
    ("lora", 3083.0, dict(method=Method.lora, lora_targets="q_proj,v_proj", **_TT31_LORA)),
    ("qlora", 2413.0, dict(method=Method.qlora, lora_targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                           **_TT31_LORA)),
)


def _torchtune31_speed(method: str, tps: float, kw: dict[str, Any]) -> PublishedSpeed:
    return PublishedSpeed(
        id=f"torchtune-llama3.1-8b:{method}-4090", source="torchtune README", page=_TT31_PAGE, unit="tokens/s/GPU",
        published=tps, switches=f"Llama 3.1 8B {method}, 1x RTX 4090, bs 2, packed 2048, compile, checkpointing, "
                                f"chunked CE, bf16", build={**_TT31, **kw}, group="torchtune-llama3.1-8b-4090",
        assumed=("the recipes of 30b8519e8 count every token of a pack (batch[\"tokens\"].numel()), as the planner "
                 "does; documents of 130 Llama 3 tokens, estimated from Wang et al. 2023's Alpaca lengths (see "
                 "TT_DOC_LEN)"),
        unmodelled=_tt_unmodelled(2048)
        + ("; bitsandbytes' paged states moving over PCIe" if method == "full" else "")
        + ("; torchao's NF4 tensors, planned at bitsandbytes' dequantization rate" if method == "qlora" else ""))


TORCHTUNE_SPEEDS += [_torchtune31_speed(*row) for row in TORCHTUNE31_TPS]


# --- Liger-Kernel README (linkedin/Liger-Kernel docs/images/e2e-tps.png, added in e85611c9, 2024-08-13) ------------
# The memory set's runs (tests/validation/published_peaks_sharded.py LIGER: LLaMA 3-8B full fine-tuning through the
# Trainer, FSDP1 FULL_SHARD on 8 A100s, batch 8, bf16, AdamW, checkpointing, SDPA, transformers 4.44), planned with
# the same configurations, and the throughput chart beside the memory chart. "Throughput (tokens/sec)" read off the
# chart's pixels: gridlines every 1,000 at 53 px (y 300 = 0, 88 = 4,000), bar tops at y 132 / 127 (Hugging Face, 1K /
# 2K) and 109 / 101 / 104 / 118 / 145 (Liger, 1K-16K): +-19 tokens/s per pixel. Hugging Face runs out of memory from
# 4K on (the memory set's labels).
_LIGER_PAGE = "linkedin/Liger-Kernel README.md, docs/images/e2e-tps.png (e85611c9)"
_LIGER_ASSUMED = ("tokens/s per GPU: the chart does not say, and its launcher was not published with it (the "
                  "examples/huggingface EfficiencyCallback came two days later and counts the Trainer's "
                  "num_input_tokens_seen, gathered over all ranks); 3,170 tokens/s summed over 8 GPUs would be 400 "
                  "per A100, 8 x 8e9 x 400 = 26 TFLOP/s, 8% of its peak, where the accelerate blog's Granite 7B "
                  "(FSDP1, checkpointing, A100) processes 3,159 per GPU")
# (Liger's kernels on, sequence, tokens/s)
LIGER_TPS = ((False, 1024, 3170.0), (False, 2048, 3264.0), (True, 1024, 3604.0), (True, 2048, 3755.0),
             (True, 4096, 3698.0), (True, 8192, 3434.0), (True, 16384, 2925.0))


def _liger_speed(liger: bool, seq: int, tps: float) -> PublishedSpeed:
    peak = next(p for p in LIGER_PEAKS if p.id == f"liger:{'liger' if liger else 'hf'}-seq{seq}")
    return PublishedSpeed(
        id=f"liger-llama3-8b:{'liger' if liger else 'hf'}-seq{seq}", source="Liger-Kernel README", page=_LIGER_PAGE,
        unit="tokens/s/GPU", published=tps, build=dict(peak.build), group="liger-llama3-8b-8xA100",
        switches=f"LLaMA 3-8B full, FSDP1 on 8 A100, bs 8, seq {seq}, bf16, AdamW, checkpointing"
                 f"{', Liger kernels' if liger else ''}", assumed=_LIGER_ASSUMED)


LIGER_SPEEDS = [_liger_speed(*row) for row in LIGER_TPS]

CASES += [*TORCHTUNE_SPEEDS, *LIGER_SPEEDS]
