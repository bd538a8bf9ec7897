"""Published peak GPU memory of real fine-tuning runs, each with its source, switches and unit.

Every case names the framework, the page (and table) it comes from, the switches as the source states
them, how the number was taken (`kind`) and its unit. `kind` decides which part of ftplan's peak is
compared: "allocated" / "active" (torch.cuda.max_memory_allocated, memory_stats active_bytes) exclude
the CUDA context and the allocator's cache; "nvidia-smi" / "unstated" include both (the whole process
as the device sees it). GB = 1e9 bytes, GiB = 2**30; a source that prints "GB" from nvidia-smi's MiB
is GiB and says so below. `oom` cases are labels: the source reports an out-of-memory failure.

Only measurements: LLaMA-Factory's README hardware table is an estimate (not used). Each case maps the
source's switches onto a planner configuration as stated; where the source's framework runs something
the planner does not model, the case's `unmodelled` says what (those are strict xfails when outside the
15% bar, and count in the statistics all the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from planner.build import build_config
from planner.models import spec_from_hf_config
from planner.strategy import (
    Attn,
    CrossEntropy,
    FsdpStrategy,
    GradCkpt,
    Method,
    Offload,
    Optimizer,
    Precision,
    Quant,
    TrainConfig,
)

GB, GiB = 1e9, 2**30


@dataclass(frozen=True, kw_only=True)
class PublishedPeak:
    id: str
    framework: str
    source: str  # page and table
    switches: str  # the run's settings as the source states them
    kind: str  # allocated | active | reserved | nvidia-smi | unstated
    unit: float  # GB or GiB, in bytes
    measured: float | None  # in `unit`; None for an out-of-memory label
    build: dict[str, Any]  # build_config keyword arguments
    hf_config: dict[str, Any] | None = None  # a model outside the catalog, as its config.json
    unmodelled: str = ""  # what the framework does that the planner does not model
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def oom(self) -> bool:
        return self.measured is None

    def config(self) -> TrainConfig:
        kw = dict(self.build)
        dropout = kw.pop("lora_dropout", None)
        cfg = build_config(**kw, check=self.hf_config is None)
        if self.hf_config is not None:
            cfg = replace(cfg, model=spec_from_hf_config(self.hf_config, name=self.id.split(":")[0]))
        return cfg if dropout is None else replace(cfg, lora_dropout=dropout)


# --- litgpt (Lightning-AI/litgpt tutorials/resource-tables.md, "Finetuning with LoRA on 1 GPU") -------
# A100-SXM4-40GB, --precision bf16-true, finetune/lora.py defaults of commit 8641822: LoRA r=8, alpha=16,
# dropout 0.05 on the query and value projections only (4,194,304 trainable parameters for Llama 2 7B =
# 32 x 2 x 8 x (4096 + 4096), as the table's column shows), AdamW, no activation checkpointing, SDPA;
# the first iteration uses the longest Alpaca sample (1,304 Llama 2 tokens: `longest_seq_ix` in
# get_batch), so the peak is at sequence 1,304. "Max GPU RAM" is torch.cuda.max_memory_allocated()/1e9.
# The model is litgpt's own code (`litgpt=True`: planner.activations.litgpt_layer_bytes_per_token): a fused qkv
# linear whose output SDPA's saved v keeps whole, 16-bit RMSNorm, one LoRA dropout on the fused input and the
# zero-pad's index_copy source; Fabric's bf16-true returns the head's 128-token chunks in fp32, which the loop holds
# through backward, and chunked_cross_entropy runs on them (planner.memory_knobs.litgpt_loss_bytes).
_LITGPT = dict(gpus="1xA100-40G", method=Method.lora, lora_r=8, lora_alpha=16, lora_targets="q_proj,v_proj",
               precision=Precision.bf16_true, seq_len=1304, attn=Attn.sdpa, cross_entropy=CrossEntropy.chunked,
               litgpt=True)
_LITGPT_SRC = "litgpt tutorials/resource-tables.md (10/20/2023), LoRA on 1 GPU"


def _litgpt(size: str, quant: str, mb: int, measured: float | None) -> PublishedPeak:
    model = {"7B": "llama-2-7b", "13B": "llama-2-13b"}[size]
    build: dict[str, Any] = {**_LITGPT, "model": model, "micro_batch": mb}
    if quant != "none":
        build.update(method=Method.qlora, quant=Quant.nf4, double_quant=quant == "nf4-dq", bnb_version="0.41.1")
    return PublishedPeak(
        id=f"litgpt:{size}-{quant}-mb{mb}", framework="litgpt", source=_LITGPT_SRC,
        switches=f"Llama 2 {size}, LoRA q,v r8, bf16-true, micro-batch {mb}, quantization {quant}, seq 1304",
        kind="allocated", unit=GB, measured=measured, build=build,
        notes="bnb.nf4 rows: litgpt quantizes the linears with bitsandbytes (Linear4bit); the LM head stays "
              "16-bit here. bitsandbytes 0.41.1: litgpt's requirements of the time (requirements-all.txt)")


LITGPT = [
    _litgpt("7B", "none", 1, 21.30), _litgpt("7B", "nf4", 1, 14.14), _litgpt("7B", "nf4-dq", 1, 13.84),
    _litgpt("7B", "none", 2, 29.07), _litgpt("7B", "none", 4, None),
    _litgpt("13B", "none", 1, 38.12), _litgpt("13B", "nf4", 1, 23.14), _litgpt("13B", "nf4-dq", 1, 22.55),
    _litgpt("13B", "none", 2, None), _litgpt("13B", "none", 4, None),
]

# --- torchtune (pytorch/torchtune README.md, "Optimization flags") ---------------------------------------
# Recipe full_finetune_single_device / lora_finetune_single_device, Llama 3.2 3B, batch size 2, max sequence
# 4096, dataset packed (so every sequence is 4096 tokens), bf16 (torchtune's dtype: bf16 weights and
# optimizer states), A100 (80 GB), no gradient accumulation; each row adds one technique to the previous.
# "Peak Memory Active (GiB)" = torch.cuda.memory_stats()["active_bytes.all.peak"]. The unpacked baseline
# row (25.5 GiB) depends on the data's lengths and is not used; the rows after "fuse optimizer step into
# backward" need optimizer_in_bwd, which the planner does not model, except LoRA and QLoRA, which the
# README says do not use it. LoRA: llama3_2/3B_lora_single_device.yaml, rank 64, alpha 128, dropout 0,
# on q, v, output projections and the MLP.
# The optimizer: torch.optim.AdamW as torchtune's Llama 3.2 configs give it, `fused: True` (every llama3_2 config
# with a torch AdamW at the table's commit 1814feb17: 1B/3B full, LoRA and QLoRA); 3B_full_single_device.yaml
# itself names bitsandbytes' PagedAdamW8bit, which the table replaces ("+ 8-bit AdamW" is a later row). The
# checkpointing row rules foreach out as well: its 24.9 GiB leaves no room for foreach's parameter-sized sqrt
# buffer above weights, gradients and states (23.9 GiB).
_TT = dict(model="llama-3.2-3b", gpus="1xA100-80G", precision=Precision.bf16_true, micro_batch=2, seq_len=4096,
           attn=Attn.sdpa, optimizer=Optimizer.adamw, fused_adamw=True)
_TT_SRC = "torchtune README.md, Optimization flags (Llama 3.2 3B, bs 2, seq 4096, A100)"
_TT_UPCAST = ("without the chunked loss torchtune's TransformerDecoder upcasts the logits to fp32 in the eager "
              "model (`self.output(h).float()`) and compiles only the loss module, so the fp32 logits and their "
              "gradient exist; ftplan's compiled standard loss is the Trainer's, upcast and loss in one graph")
_TT_LORA = dict(lora_r=64, lora_alpha=128, lora_targets="q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
# torchtune's `compile: True` compiles each decoder layer and the loss (torchtune/training/_compile.py,
# compile_model and compile_loss: for the chunked loss its compute_cross_entropy); --compile models both.


def _tt(row: str, gib: float, unmodelled: str = "", **kw: Any) -> PublishedPeak:
    build = {**_TT, **kw, "torch_compile": "+compile" in row}
    return PublishedPeak(id=f"torchtune:{row}", framework="torchtune", source=_TT_SRC, switches=row, kind="active",
                         unit=GiB, measured=gib, build=build, unmodelled=unmodelled)


TORCHTUNE = [
    _tt("full+packed", 60.0, method=Method.full),
    _tt("full+packed+compile", 51.0, _TT_UPCAST, method=Method.full),
    _tt("full+packed+compile+chunked-ce", 42.9, method=Method.full, cross_entropy=CrossEntropy.chunked),
    _tt("full+packed+compile+chunked-ce+ac", 24.9, method=Method.full, cross_entropy=CrossEntropy.chunked,
        grad_ckpt=GradCkpt.full),
    _tt("lora+packed+compile+chunked-ce+ac+offload", 8.5, method=Method.lora, **_TT_LORA,
        lora_dropout=0.0, cross_entropy=CrossEntropy.chunked, grad_ckpt=GradCkpt.full, activation_offload=True),
    _tt("qlora+packed+compile+chunked-ce+ac+offload", 4.6, method=Method.qlora, **_TT_LORA,
        lora_dropout=0.0, cross_entropy=CrossEntropy.chunked, grad_ckpt=GradCkpt.full, activation_offload=True),
]

# --- Hugging Face Trainer / TRL + PEFT (huggingface/peft docs/source/accelerate/{deepspeed,fsdp}.md) -------
# examples/sft/train.py (TRL SFTTrainer), Llama-2-70b-hf, ultrachat packed to 2048 tokens, bf16, gradient
# checkpointing, flash_attention_2, LoRA r=8, alpha=16, dropout 0.1 on all linear layers. Memory "as seen in
# the screenshot" of nvidia-smi; "64 GB (80%)" of an 80 GB H100 is 64 GiB of its 79.6 GiB, so GB = GiB.
# The LoRA rows (commit aa2ca83ca, 2024-02-26, which added them): examples/sft/utils.py calls from_pretrained
# without torch_dtype, so transformers 4.x loads fp32 weights (--frozen-fp32): FSDP keeps the frozen base in
# fp32 shards; DeepSpeed casts it to bf16 (zero3_init_flag: true). run_peft_{deepspeed,fsdp}.sh: mb 8, ga 4,
# --use_reentrant False. The QLoRA rows (commit 6008f272a, 2024-03-13): torch_dtype = the quant storage dtype
# (bf16), --use_reentrant True, mb 2, ga 2.
# transformers: examples/sft/requirements.txt at both commits installs transformers from git main, 4.39.0.dev0 in
# February-March 2024: the model upcasts its logits and shifts a contiguous fp32 copy (planner.transformers_versions).
_PEFT = dict(model="llama-2-70b", lora_r=8, lora_alpha=16, seq_len=2048, grad_ckpt=GradCkpt.full, attn=Attn.flash,
             precision=Precision.bf16_mixed, transformers_version="4.39.0")
_QLORA = dict(method=Method.qlora, quant=Quant.nf4, double_quant=True)
# The DeepSpeed rows run from accelerate's yaml alone (deepspeed_config: zero_stage 3, no deepspeed_config_file):
# accelerate builds a ds_config with only the stage, offload devices and 16-bit save (accelerate/utils/dataclasses.py
# DeepSpeedPlugin.__post_init__), so no size is "auto" for the Trainer to fill (transformers/integrations/
# deepspeed.py trainer_config_finalize fills only keys set to "auto") and DeepSpeed's own defaults apply
# (deepspeed/runtime/zero/config.py): reduce_bucket_size 5e8, stage3_prefetch_bucket_size 5e7,
# stage3_param_persistence_threshold 1e5, overlap_comm true at stage 3. Nor has it an optimizer section: DeepSpeed
# steps the Trainer's `adamw_torch` (transformers 4.39's default optim), torch's foreach kernel on CUDA (its
# temporary, an fp32 partition of the LoRA parameters, is far below the backward peak).
_DS_DEFAULT_SIZES = {"ds_sizes": {"reduce_bucket": 500_000_000, "prefetch_bucket": 50_000_000,
                                  "persistence_threshold": 100_000, "overlap_comm": True}}
HF_PEFT = [
    PublishedPeak(id="peft:70b-lora-zero3-8xH100", framework="HF Trainer + PEFT", kind="nvidia-smi", unit=GiB,
                  source="peft docs accelerate/deepspeed.md, Memory usage", measured=64.0,
                  switches="ZeRO-3 (accelerate, zero3_init), mb 8, ga 4, LoRA all-linear, 8xH100, weights loaded "
                           "in fp32 (DeepSpeed casts them to bf16)",
                  build={**_PEFT, "gpus": "8xH100", "method": Method.lora, "zero": 3, "micro_batch": 8,
                         "grad_accum": 4, "frozen_fp32": True}, extra=_DS_DEFAULT_SIZES),
    PublishedPeak(id="peft:70b-qlora-zero3-2xA100-40G", framework="HF Trainer + PEFT", kind="unstated", unit=GiB,
                  source="peft docs accelerate/deepspeed.md, QLoRA + ZeRO-3 Memory usage", measured=36.6,
                  switches="ZeRO-3, bnb_4bit_quant_storage bf16, nested quant, mb 2, ga 2, 2x40GB",
                  build={**_PEFT, **_QLORA, "gpus": "2xA100-40G", "zero": 3, "micro_batch": 2, "grad_accum": 2},
                  extra=_DS_DEFAULT_SIZES),
    PublishedPeak(id="peft:70b-qlora-fsdp-offload-2x24GB", framework="HF Trainer + PEFT", kind="unstated", unit=GiB,
                  source="peft docs accelerate/fsdp.md, QLoRA + FSDP Memory usage", measured=19.6,
                  switches="FSDP1 full shard, fsdp_offload_params, quant storage bf16, mb 2, ga 2, 2x24GB",
                  build={**_PEFT, **_QLORA, "gpus": "2xRTX4090", "fsdp": FsdpStrategy.full_shard, "fsdp_version": 1,
                         "offload": Offload.all, "micro_batch": 2, "grad_accum": 2}),
    PublishedPeak(id="peft:70b-qlora-fsdp-2GPU", framework="HF Trainer + PEFT", kind="unstated", unit=GiB,
                  source="peft docs accelerate/fsdp.md, QLoRA + FSDP Memory usage (offload disabled)",
                  measured=35.6, switches="as above without CPU offloading (GPU type not stated)",
                  build={**_PEFT, **_QLORA, "gpus": "2xA100-80G", "fsdp": FsdpStrategy.full_shard, "fsdp_version": 1,
                         "micro_batch": 2, "grad_accum": 2}),
    PublishedPeak(id="peft:70b-lora-fsdp-8xH100", framework="HF Trainer + PEFT", kind="nvidia-smi", unit=GiB,
                  source="peft docs accelerate/fsdp.md, Memory usage", measured=72.0,
                  switches="FSDP1 full shard, use_orig_params false, mb 8, ga 4, LoRA all-linear, 8xH100, weights "
                           "loaded in fp32; "
                           "72-80 GB, the top of the range while saving a FULL_STATE_DICT at the end",
                  build={**_PEFT, "gpus": "8xH100", "method": Method.lora, "fsdp": FsdpStrategy.full_shard,
                         "fsdp_version": 1, "micro_batch": 8, "grad_accum": 4, "frozen_fp32": True}),
]

# --- Qwen (QwenLM/Qwen README.md, "Profiling of Memory and Speed") ---------------------------------------
# finetune.py (HF Trainer + peft) with finetune_lora_single_gpu.sh: one A100-SXM4-80G, bf16, flash
# attention 2, batch size 1, gradient accumulation 8, gradient checkpointing, LoRA r=64, alpha=16,
# dropout 0.05 on c_attn, c_proj, w1, w2 (every linear of the block), sequence 256 ... 8192. The README
# profiles "the memory (GB)" and does not say with which tool (kind "unstated"). Unit: GB = 1e9 bytes. The
# table itself rules GiB out: its Qwen-7B full-parameter figure at 1024 tokens, 162.0G over 2 GPUs, is 81.0 per
# GPU, more than an A100-80GB's 80 GiB, so it cannot be GiB (75.4 GiB as GB). (Its inference table is another
# matter: Qwen's profile.py prints torch.cuda.max_memory_allocated() / 1024**3 labelled "GB", so there "GB" is
# GiB; the finetuning table names no script.) The models' config.json (Qwen/Qwen-7B,
# Qwen/Qwen-1_8B): QWen blocks are
# Llama-shaped (RMSNorm, RoPE, SwiGLU of width intermediate_size / 2, qkv bias, untied head). The "LoRA" rows
# train no embedding or head (the README: "LoRA (emb)" is the other row; finetune.py adds wte and lm_head to
# modules_to_save only for a base model without q_lora). Qwen's modeling_qwen.py calls CrossEntropyLoss on the
# bf16 logits (plus a contiguous shifted copy), but under the Trainer's bf16 autocast cross_entropy runs in fp32
# (torch autocast's fp32 op list), so the planner's standard loss (12 V per token at its peak) applies.
_QWEN7B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 11008,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
           "max_position_embeddings": 8192, "tie_word_embeddings": False}
_QWEN1_8B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5504,
             "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
             "max_position_embeddings": 8192, "tie_word_embeddings": False}
_QWEN = dict(model="qwen2.5-7b", gpus="1xA100-80G", method=Method.lora, lora_r=64, lora_alpha=16,
             lora_dropout=0.05, precision=Precision.bf16_mixed, attn=Attn.flash, grad_ckpt=GradCkpt.full,
             micro_batch=1, grad_accum=8)


_QWEN_FW = "Qwen finetune.py (HF Trainer)"
_QWEN_SRC = "QwenLM/Qwen README.md, Profiling of Memory and Speed"


def _qwen(size: str, seq: int, gb: float) -> PublishedPeak:
    hf = {"7B": _QWEN7B, "1.8B": _QWEN1_8B}[size]
    return PublishedPeak(
        id=f"qwen-{size}:lora-seq{seq}", framework=_QWEN_FW, kind="unstated", unit=GB, measured=gb,
        source=f"{_QWEN_SRC} (LoRA, 1 GPU)",
        switches=f"Qwen-{size} LoRA r64 all linears, bf16, flash-attn 2, grad ckpt, bs 1, seq {seq}",
        build={**_QWEN, "seq_len": seq}, hf_config=hf)


# The table's "Full-parameter" rows: finetune/finetune_ds.sh at commit e8e1596 (2023-11-30, which added the 1.8B
# rows): DeepSpeed ZeRO-3 (finetune/ds_config_zero3.json: no offload, DeepSpeed's AdamW), bf16, gradient
# checkpointing, with the table's batch size 1 and accumulation 8. Qwen-1.8B on 1 GPU; Qwen-7B on 2 GPUs, where
# the table gives the two GPUs' sum: per GPU = sum / 2. Evidence: 139.2G-162.0G is more than one 80 GB card
# holds; the table's other multi-GPU rows are sums too (72B LoRA + ZeRO-3 on 4 GPUs: 215.4G-289.2G; 7B LoRA
# multinode, 2x2 GPUs: 74.7G at 256 tokens, about 4x the 1-GPU LoRA row's 20.1G); and a Qwen maintainer sizes
# full fine-tuning from this row as 18 bytes x 7.7B parameters, "close to 140" (QwenLM/Qwen issue 504), the
# model states of both GPUs together.
# DeepSpeed of the table's time: 0.12.x (0.12.3, November 2023; every release up to 0.18 builds ZeRO-3's fp32
# master through a 16-bit clone, planner.zero3_init_allocations). The optimizer's construction leaves segments its
# step cannot fill: replayed under the caching allocator's rules, 2.65 GiB free at the step for 1.8B on 1 GPU and
# 3.77 GiB for 7B on 2 GPUs (sub_group_size 1e9: 2 and 4 sub-groups; the 4-byte gradient_buffer of the largest
# sub-group stays cached where the 16-bit gradient partitions outgrow it). Not explained: the 7B rows grow 10.6 GB
# per GPU from 256 to 1024 tokens (the 1024 row fills 95% of the card) where no tensor grows by more than ~1 GB, and
# the 1.8B rows' constant sits 3.8 GiB above ftplan's device reading.
# The optimizer: ds_config_zero3.json's "optimizer" section (type AdamW, "auto" params) makes DeepSpeed build its own,
# FusedAdam on CUDA (deepspeed/runtime/engine.py `_configure_basic_optimizer` -> get_optimizer_configuration), which
# updates in place (deepspeed/ops/adam/fused_adam.py, multi_tensor_applier): fused_adamw, ftplan's in-place AdamW, not
# the Trainer's `adamw_torch` (finetune.py's default optim, which the section overrides) whose foreach kernel would
# hold an fp32 partition of temporaries in the step.
_QWEN_DEEPSPEED = "0.12.3"
_QWEN_FULL = dict(model="qwen2.5-7b", method=Method.full, precision=Precision.bf16_mixed, attn=Attn.flash,
                  grad_ckpt=GradCkpt.full, micro_batch=1, grad_accum=8, zero=3, fused_adamw=True)


def _qwen_full(size: str, seq: int, gb: float) -> PublishedPeak:
    hf, gpus = {"7B": (_QWEN7B, 2), "1.8B": (_QWEN1_8B, 1)}[size]
    return PublishedPeak(
        id=f"qwen-{size}:full-seq{seq}", framework=_QWEN_FW, kind="unstated", unit=GB, measured=gb / gpus,
        source=f"{_QWEN_SRC} (Full-parameter, {gpus} GPU{'s' if gpus > 1 else ''})",
        switches=f"Qwen-{size} full fine-tuning, DeepSpeed ZeRO-3, bf16, flash-attn 2, grad ckpt, bs 1, seq {seq}",
        build={**_QWEN_FULL, "gpus": f"{gpus}xA100-80G", "seq_len": seq}, hf_config=hf,
        extra={"ds_sizes": {"release": _QWEN_DEEPSPEED}},
        notes="the 7B figures are the sum over its 2 GPUs" if gpus > 1 else "")


QWEN = [_qwen("7B", s, g) for s, g in ((256, 20.1), (512, 20.4), (1024, 21.5), (2048, 23.8), (4096, 29.7),
                                       (8192, 36.6))] + \
       [_qwen("1.8B", s, g) for s, g in ((256, 6.7), (512, 7.4), (1024, 8.4), (2048, 11.0), (4096, 16.2),
                                         (8192, 21.8))] + \
       [_qwen_full("1.8B", s, g) for s, g in ((256, 43.5), (512, 43.5), (1024, 43.5), (2048, 43.5), (4096, 47.1),
                                              (8192, 48.3))] + \
       [_qwen_full("7B", s, g) for s, g in ((256, 139.2), (512, 148.0), (1024, 162.0))]

CASES: list[PublishedPeak] = [*LITGPT, *TORCHTUNE, *HF_PEFT, *QWEN]
