"""Published peaks of multi-GPU runs (ZeRO-2/3, FSDP1, offload) and their single-GPU neighbours from the same
tables, each with its source, switches and reading (see published_peaks.py for the fields).

Sources (read at the commits named):
- Qwen (QwenLM/Qwen README.md "Profiling of Memory and Speed", HEAD of the archived repo): Qwen-72B LoRA +
  DeepSpeed ZeRO-3 on 4 A100-80G, and Qwen-7B "LoRA (multinode)" on 2 nodes x 2 A100-80G, whose launcher
  finetune/finetune_lora_ds.sh defaults to finetune/ds_config_zero2.json. The table's multi-GPU figures are the
  sums over the GPUs (published_peaks.py explains why); per GPU = sum / GPUs.
- Answer.AI fsdp_qlora (AnswerDotAI/fsdp_qlora benchmarks_03_2024.md, train.py at 05ed9f2): FSDP1 through their
  train.py on 2 RTX 3090 / 4090 (24 GB): "Peak Memory (GiB)" is `torch.cuda.max_memory_reserved` over a step
  (train.py logs memory/reserved_peak; the text adds two allocated peaks). train.py defaults: precision bf16 (model,
  LoRA and AdamW states in bf16, no autocast: bf16-true), peft LoRA r 64, alpha 16, dropout 0.1 on q,k,v,gate,up,
  down (`lora_target_modules all`), FSDP1 FULL_SHARD (`ddp` = NO_SHARD), use_orig_params=False,
  limit_all_gathers=True, BACKWARD_PRE, activation checkpointing of each decoder layer (the template passes
  --reentrant_checkpointing True), CPUOffload(offload_params) with --use_cpu_offload, dataset "dummy" truncated to
  the context length, torch.optim.AdamW. QLoRA: bitsandbytes Linear4bit nf4 with quant_storage bf16, compress
  statistics (double quantization), no prepare_model_for_kbit_training. Its loop keeps the model's output until after
  the optimizer step (`output = model(...)`, `loss.backward()`, `optimizer.step()`, then `output = None`:
  --keeps-output), with the transformers of February-March 2024 (4.37-4.39; the README later excludes 4.38 and 4.39),
  whose Llama returns fp32 logits (`logits = logits.float()` from 4.31 to 4.45): 4 bytes per logit through backward.
- ms-swift (modelscope/ms-swift examples/train at 3602360): `swift sft` (the HF Trainer) with `--deepspeed zero3`
  (swift/config/zero3.json: overlap_comm false, sub_group_size 1e9, "auto" buckets), gradient checkpointing on
  (swift/trainers/arguments.py: gradient_checkpointing True), packing to max_length (every sequence full),
  use_liger_kernel (Liger's RMSNorm, SwiGLU, RoPE and fused linear cross-entropy), flash-attn, Qwen2.5-7B full
  fine-tuning on 4 GPUs. The scripts' header comments give "4 * 42GB" etc.; which tool read them is not stated
  (ms-swift's own log prints max_memory_reserved as memory(GiB)): kind "unstated", unit GiB. The optimizer: zero3.json
  has no "optimizer" section and ms-swift sets no `optim` (swift/trainers/arguments.py), so DeepSpeed steps the
  Trainer's default, `adamw_torch` in the transformers the scripts' header figures were measured with (they came with
  7b709960f, 2025-04-06, requirements/framework.txt transformers<4.52; `adamw_torch_fused` became the default only
  for torch >= 2.8, transformers PR #37358, July 2025): torch's foreach kernel on CUDA, whose `exp_avg_sq_sqrt` holds
  an fp32 partition in the step (planner/torch_adamw.py deepspeed_client_kernel).
- Liger-Kernel's README benchmark (FSDP1 through the Trainer, 8 A100s): see LIGER below.
"""

from __future__ import annotations

from typing import Any

from published_peaks import GB, GiB, PublishedPeak

from planner.strategy import Attn, CrossEntropy, FsdpStrategy, GradCkpt, Kernels, Method, Offload, Precision, Quant

# --- Qwen (first generation) README: the multi-GPU rows ----------------------------------------------------------
_QWEN72B = {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 8192, "intermediate_size": 24576,
            "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 64,
            "max_position_embeddings": 32768, "tie_word_embeddings": False}
# Qwen/Qwen-72B config.json: intermediate_size 49152 is the concatenated w1/w2 width; each is 24576 (the
# Llama-shaped spec takes the per-branch width, as published_peaks.py does for Qwen-7B's 22016 -> 11008).
_QWEN7B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 11008,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
           "max_position_embeddings": 8192, "tie_word_embeddings": False}
_QWEN_LORA = dict(model="qwen2.5-7b", method=Method.lora, lora_r=64, lora_alpha=16, lora_dropout=0.05,
                  precision=Precision.bf16_mixed, attn=Attn.flash, grad_ckpt=GradCkpt.full, micro_batch=1,
                  grad_accum=8)
_QWEN_FW = "Qwen finetune.py (HF Trainer)"
_QWEN_SRC = "QwenLM/Qwen README.md, Profiling of Memory and Speed"
# Both rows' ds_config (finetune/ds_config_zero3.json and ds_config_zero2.json at e8e1596) has an "optimizer" section
# (type AdamW): DeepSpeed builds FusedAdam, which updates in place (published_peaks.py _QWEN_FULL): fused_adamw.
_QWEN_DS_OPTIMIZER = {"fused_adamw": True}


def _qwen72b(seq: int, gb_sum: float) -> PublishedPeak:
    return PublishedPeak(
        id=f"qwen-72B:lora-zero3-seq{seq}", framework=_QWEN_FW, kind="unstated", unit=GB, measured=gb_sum / 4,
        source=f"{_QWEN_SRC} (72B, LoRA + DeepSpeed ZeRO-3, 4 A100-80G)",
        switches=f"Qwen-72B LoRA r64 all linears, finetune_lora_ds.sh with ds_config_zero3.json (overlap_comm, "
                 f"'auto' buckets), bf16, flash-attn 2, grad ckpt, bs 1, seq {seq}; table sums 4 GPUs",
        build={**_QWEN_LORA, **_QWEN_DS_OPTIMIZER, "gpus": "4xA100-80G", "zero": 3, "seq_len": seq},
        hf_config=_QWEN72B,
        notes="the figures are the sum over 4 GPUs")


def _qwen7b_multinode(seq: int, gb_sum: float) -> PublishedPeak:
    return PublishedPeak(
        id=f"qwen-7B:lora-multinode-zero2-seq{seq}", framework=_QWEN_FW, kind="unstated", unit=GB,
        measured=gb_sum / 4, source=f"{_QWEN_SRC} (7B, LoRA (multinode), 2 nodes x 2 A100-80G)",
        switches=f"Qwen-7B LoRA r64, finetune_lora_ds.sh default ds_config_zero2.json (overlap_comm, reduce and "
                 f"allgather buckets 2e8), bf16, flash-attn 2, grad ckpt, bs 1, seq {seq}; table sums 4 GPUs",
        build={**_QWEN_LORA, **_QWEN_DS_OPTIMIZER, "gpus": "2x2xA100-80G", "zero": 2, "seq_len": seq},
        hf_config=_QWEN7B,
        extra={"ds_sizes": {"reduce_bucket": 200_000_000, "allgather_bucket": 200_000_000}},
        notes="the figures are the sum over 4 GPUs")


QWEN_SHARDED = [_qwen72b(s, g) for s, g in ((256, 215.4), (512, 217.7), (1024, 222.6), (2048, 228.8),
                                             (4096, 249.0), (8192, 289.2))] + \
               [_qwen7b_multinode(s, g) for s, g in ((256, 74.7), (512, 77.6), (1024, 84.9), (2048, 95.1),
                                                     (4096, 121.1), (8192, 155.5))]

# --- Answer.AI fsdp_qlora benchmarks (FSDP1, 2 x 24 GB) -------------------------------------------------------------
_AAI = dict(lora_r=64, lora_alpha=16, lora_dropout=0.1, lora_targets="q_proj,k_proj,v_proj,gate_proj,up_proj,down_proj",
            precision=Precision.bf16_true, grad_ckpt=GradCkpt.full, attn=Attn.sdpa, fsdp_version=1, kbit_prep=False,
            keeps_output=True, transformers_version="4.38.2")
_AAI_FW = "Answer.AI fsdp_qlora (FSDP1)"
_AAI_SRC = "AnswerDotAI/fsdp_qlora benchmarks_03_2024.md"
_YI34B = {"model_type": "llama", "vocab_size": 64000, "hidden_size": 7168, "intermediate_size": 20480,
          "num_hidden_layers": 60, "num_attention_heads": 56, "num_key_value_heads": 8,
          "max_position_embeddings": 4096, "tie_word_embeddings": False}  # 01-ai/Yi-34B config.json


def _aai(model: str, method: str, mb: int, seq: int, gib: float, *, gpus: str = "2xRTX3090", offload: bool = False,
         ddp: bool = False, hf: dict | None = None, table: str = "Llama-2 7B", allocated: float | None = None
         ) -> PublishedPeak:
    build: dict[str, Any] = {**_AAI, "model": "llama-2-7b" if hf else model, "gpus": gpus, "micro_batch": mb,
                             "seq_len": seq,
                             "fsdp": FsdpStrategy.no_shard if ddp else FsdpStrategy.full_shard,
                             "offload": Offload.all if offload else Offload.none}
    if method == "qlora":
        build.update(method=Method.qlora, quant=Quant.nf4, double_quant=True)
    else:
        build.update(method=Method.lora)
    label = f"{method}-{'ddp' if ddp else 'fsdp'}{'-offload' if offload else ''}-mb{mb}-seq{seq}"
    return PublishedPeak(
        id=f"answerai:{model if hf is None else 'yi-34b'}-{label}", framework=_AAI_FW, kind="reserved", unit=GiB,
        measured=gib, source=f"{_AAI_SRC} ({table}, {gpus.split('x')[1]})",
        switches=f"{table} {method}, {'NO_SHARD' if ddp else 'FULL_SHARD'}{', CPU offload' if offload else ''}, "
                 f"bs {mb}, context {seq}, bf16, LoRA r64 (q,k,v,gate,up,down), reentrant checkpointing",
        build=build, hf_config=hf, extra={"allocated": allocated} if allocated is not None else {})


ANSWERAI = [
    _aai("llama-2-7b", "qlora", 1, 512, 4.98), _aai("llama-2-7b", "qlora", 1, 2048, 5.21),
    _aai("llama-2-7b", "lora", 1, 512, 10.24, allocated=8.28), _aai("llama-2-7b", "lora", 1, 2048, 10.22,
                                                                    allocated=9.16),
    _aai("llama-2-7b", "qlora", 4, 2048, 11.22), _aai("llama-2-7b", "qlora", 10, 2048, 20.97),
    _aai("llama-2-7b", "lora", 4, 2048, 16.14), _aai("llama-2-7b", "lora", 6, 2048, 21.35),
    _aai("llama-2-7b", "qlora", 8, 2048, 20.94, ddp=True), _aai("llama-2-7b", "lora", 4, 2048, 22.04, ddp=True),
    _aai("llama-2-7b", "lora", 10, 2048, 22.69, offload=True, gpus="2xRTX4090"),
    _aai("llama-2-7b", "qlora", 12, 2048, 22.38, offload=True, gpus="2xRTX4090"),
    _aai("yi-34b", "qlora", 2, 2048, 23.05, hf=_YI34B, table="Yi 34B"),
    _aai("yi-34b", "qlora", 4, 2048, 22.98, offload=True, hf=_YI34B, table="Yi 34B"),
    _aai("llama-2-70b", "qlora", 2, 2048, 14.92, offload=True, table="Llama-2 70B"),
    _aai("mistral-7b", "qlora", 12, 2048, 22.54, offload=True, table="Mistral 7B v0.2"),
    _aai("mistral-7b", "qlora", 1, 24576, 22.54, offload=True, table="Mistral 7B v0.2"),
]

# --- ms-swift examples: Qwen2.5-7B full fine-tuning, ZeRO-3, 4 GPUs ---------------------------------------------------
_SWIFT = dict(model="qwen2.5-7b", method=Method.full, precision=Precision.bf16_mixed, zero=3, attn=Attn.flash,
              grad_ckpt=GradCkpt.full, micro_batch=1, kernels=Kernels.liger, cross_entropy=CrossEntropy.fused)
_SWIFT_FW = "ms-swift (HF Trainer)"


def _swift(script: str, row: str, seq: int, ga: int, value: float, unit: float, gpus: str = "4xA100-80G",
           liger: bool = True, note: str = "") -> PublishedPeak:
    build: dict[str, Any] = {**_SWIFT, "gpus": gpus, "seq_len": seq, "grad_accum": ga}
    if not liger:
        build.update(kernels=Kernels.eager, cross_entropy=CrossEntropy.standard)
    return PublishedPeak(
        id=f"swift:{script}:{row}", framework=_SWIFT_FW, kind="unstated", unit=unit, measured=value,
        source=f"modelscope/ms-swift {script} header comment", build=build, notes=note,
        switches=f"Qwen2.5-7B full, --deepspeed zero3, packing to {seq}, mb 1, ga {ga}, flash-attn, grad ckpt"
                 f"{', use_liger_kernel' if liger else ''}, 4 A100")


SWIFT = [
    _swift("examples/train/liger/sft.sh", "liger+packing", 8192, 2, 42, GB,
           note="test env 4 * A100; '4 * 42GB'"),
    _swift("examples/train/liger/sft.sh", "no-liger+packing", 8192, 2, 54, GB, liger=False,
           note="'Not using use_liger_kernel: 4 * 54GB' (the packing row's neighbour: packing stays on)"),
    _swift("examples/train/packing/liger_kernel.sh", "liger+packing-16k", 16384, 2, 42, GB,
           note="'Max Length: 16K, GPU Memory: 4 * 42GB'"),
]

# --- Liger-Kernel README (linkedin/Liger-Kernel docs/images/e2e-memory.png, README "Benchmark conditions") --------
# LLaMA 3-8B, batch 8, bf16, AdamW, gradient checkpointing, FSDP1 on 8 A100s, sequence 1K-16K, Hugging Face with
# and without Liger's kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy). The example's launcher
# (examples/huggingface/run_benchmarks.sh, config/fsdp_config.json): the Trainer with --bf16, --fsdp "full_shard
# auto_wrap", backward_prefetch backward_pre, forward_prefetch, FSDP activation checkpointing. "Peak Reserved
# Memory (MB)": max_memory_reserved in binary MB (examples/huggingface/callback.py: "For memory, we use binary
# system"), read off the bar chart's pixels against its 20,000 MB gridlines (+-0.4 GB); OOM bars are labels.
# transformers: the chart came with commit e85611c9 (2024-08-13), whose setup.py asks for transformers>=4.40.1; the
# newest release that day was 4.44.0. Every release between upcasts the logits in the model and shifts a contiguous
# fp32 copy for the loss (planner.transformers_versions: 4.31-4.45), so 4.44.0 stands for them.
_LIGER = dict(model="llama-3-8b", gpus="8xA100-80G", method=Method.full, precision=Precision.bf16_mixed,
              fsdp=FsdpStrategy.full_shard, fsdp_version=1, micro_batch=8, grad_ckpt=GradCkpt.full, attn=Attn.sdpa,
              transformers_version="4.44.0")
_LIGER_SRC = "linkedin/Liger-Kernel README.md, docs/images/e2e-memory.png"


def _liger(liger: bool, seq: int, mib: float | None) -> PublishedPeak:
    build: dict[str, Any] = {**_LIGER, "seq_len": seq}
    if seq > 8192:  # Llama 3's 8192 positions: the run went past them (RoPE scaling changes no memory)
        build["rope_scaling"] = "linear:2.0"
    if liger:
        build.update(kernels=Kernels.liger, cross_entropy=CrossEntropy.fused)
    return PublishedPeak(
        id=f"liger:{'liger' if liger else 'hf'}-seq{seq}", framework="Liger-Kernel README (HF Trainer + FSDP1)",
        kind="reserved", unit=2**20, measured=mib, source=_LIGER_SRC, build=build,
        switches=f"LLaMA 3-8B full, FSDP1 FULL_SHARD on 8 A100, bs 8, seq {seq}, bf16, AdamW, checkpointing"
                 f"{', Liger kernels' if liger else ''}" + ("" if mib else ": out of memory"))


LIGER = [_liger(False, 1024, 36604), _liger(False, 2048, 60755), _liger(False, 4096, None),
         _liger(False, 8192, None), _liger(False, 16384, None),
         _liger(True, 1024, 19623), _liger(True, 2048, 23396), _liger(True, 4096, 30566), _liger(True, 8192, 47925),
         _liger(True, 16384, 76981)]

CASES: list[PublishedPeak] = [*QWEN_SHARDED, *ANSWERAI, *SWIFT, *LIGER]
