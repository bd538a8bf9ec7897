"""Bytes per element of the model states, and the parameters one GPU holds for its pipeline stage.

Model states follow Rajbhandari et al. 2020 (ZeRO, Sec. 3 and Fig. 1): with mixed precision and Adam
each trainable parameter costs 2 (16-bit weight) + 2 (16-bit gradient) + K = 12 (fp32 master, momentum,
variance) bytes; how each engine stores and shards them is in planner/engines/.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from planner.choices import Engine, Method, Optimizer, Precision, Quant, Stage
from planner.models import ModelSpec
from planner.params import (
    embedding_params,
    head_params,
    layer_params,
    lora_params,
    norm_params,
    quantizable_params,
    total_params,
)

if TYPE_CHECKING:
    from planner.strategy import Adapter, TrainConfig


def quant_bytes_per_param(quant: Quant, double_quant: bool) -> float:
    """bitsandbytes storage. NF4: 4 bits plus one absmax per 64-weight block, fp32 (0.5 bits/param) or,
    with double quantization, 8-bit absmax plus one fp32 constant per 256 blocks (0.127 bits/param):
    Dettmers et al. 2023 (QLoRA), Sec. 3 "Double Quantization". LLM.int8(): one byte per weight
    plus one fp32 scale per row (Dettmers et al. 2022), counted here per weight of a 4096-wide row."""
    if quant is Quant.nf4:
        return (4 + (8 / 64 + 32 / (64 * 256) if double_quant else 32 / 64)) / 8
    if quant is Quant.int8:
        return 1 + 4 / 4096
    return 2.0


def optimizer_state_bytes_per_param(optimizer: Optimizer, precision: Precision) -> float:
    """States the optimizer keeps per trainable parameter. torch AdamW keeps exp_avg and exp_avg_sq in
    the parameter's dtype (8 bytes for fp32 parameters, 4 for bf16); bitsandbytes 8-bit AdamW keeps two
    uint8 states plus an fp32 absmax per 256-element block (bitsandbytes/optim/optimizer.py,
    block-wise quantization, Dettmers et al. 2021); SGD with momentum keeps one buffer."""
    dtype_bytes = 2 if precision is Precision.bf16_true else 4
    if optimizer in (Optimizer.adamw, Optimizer.paged_adamw):
        return 2 * dtype_bytes
    if optimizer in (Optimizer.adamw_8bit, Optimizer.paged_adamw_8bit):
        return 2 * (1 + 4 / 256)
    return dtype_bytes  # SGD momentum buffer


def activation_dtype_bytes(precision: Precision) -> int:
    return 4 if precision is Precision.fp32 else 2


def grad_dtype_bytes(precision: Precision) -> float:
    """Gradients take the parameter's dtype: bf16 under bf16-true, else the fp32 (master) weights'."""
    return 2.0 if precision is Precision.bf16_true else 4.0


def compute_copy_bytes(precision: Precision) -> float:
    """The compute copy of a weight that DeepSpeed's "bit16" groups and FSDP's gathered units hold:
    16-bit, or fp32 in a 32-true run (the profiler's fp32 CPU runs measure it)."""
    return 4.0 if precision is Precision.fp32 else 2.0


def is_mixed(precision: Precision) -> bool:
    return precision in (Precision.bf16_mixed, Precision.fp16_mixed)


def fp32_adapters(precision: Precision) -> bool:
    """Whether LoRA adapters are kept in fp32: peft's default (get_peft_model autocast_adapter_dtype=True), which
    ftplan's runner, profiler and dry run pass except under bf16-true, where everything trains in bf16 (as
    LLaMA-Factory's pure_bf16 does) and the planner's states count bf16 adapters."""
    return precision is not Precision.bf16_true


def kbit_prepared(cfg: TrainConfig) -> bool:
    """Whether peft's prepare_model_for_kbit_training shapes the run of a 4-bit plan (--kbit-prep, the default).

    It casts every parameter that is not quantized (embeddings, norms, LM head) to fp32 (peft/utils/other.py
    prepare_model_for_kbit_training), so under mixed-precision autocast the residual stream, the norms' outputs
    and the 4-bit linears' outputs (bitsandbytes casts them back to the input's dtype) are fp32: planner.memory
    counts fp32 non-quantized weights, an fp32 residual stream and MLP, each LoRA branch's own 16-bit copy of its
    input, and the LM head's 16-bit weight copy. TRL's SFTTrainer calls it for a 4-bit model that is not sharded
    (FSDP / ZeRO-3 QLoRA skip it, trl/trainer/sft_trainer.py), as do the QLoRA reference script (qlora.py),
    MedicalGPT and Qwen's finetune.py; LLaMA-Factory does not (--no-kbit-prep). It shapes only DDP (one GPU
    included) under autocast: DeepSpeed's engine casts every parameter back to 16 bits at initialization
    (deepspeed/runtime/engine.py _cast_module_mixed_precision), and bf16-true plans stay bf16 throughout.
    ftplan's runner calls it exactly when this is True (runner/model.py)."""
    return (cfg.kbit_prep and cfg.quant is not Quant.none and cfg.engine is Engine.ddp
            and is_mixed(cfg.precision))


# TRL's RewardTrainer loads AutoModelForSequenceClassification with num_labels=1 (trl/trainer/reward_trainer.py)
RM_NUM_LABELS = 1


def score_params(m: ModelSpec, stage: Stage) -> int:
    """A reward model's `score` head, h x num_labels weights and no bias: transformers' GenericForSequenceClassification
    (modeling_layers.py, `self.score = nn.Linear(hidden_size, num_labels, bias=False)`), which
    LlamaForSequenceClassification and the other AutoModelForSequenceClassification classes of decoder models are.
    Other stages have none."""
    return m.hidden_size * RM_NUM_LABELS if stage is Stage.rm else 0


def final_norm_params(m: ModelSpec) -> int:
    """The final norm after the last decoder layer (as planner.params.head_params counts it)."""
    return m.final_norm_params if m.final_norm_params >= 0 else norm_params(m)


def head_weight_params(m: ModelSpec, stage: Stage) -> int:
    """The weight after the final norm: the LM head's own V x H (none when tied to the input embedding) or a reward
    model's `score` (score_params), whatever the config ties: GenericForSequenceClassification has no lm_head, its
    base model (AutoModel.from_config) keeps the embedding, the input's alone."""
    if stage is Stage.rm:
        return score_params(m, stage)
    return 0 if m.tie_embeddings else m.vocab_size * m.hidden_size


def output_params(m: ModelSpec, stage: Stage) -> int:
    """What the model holds after its last decoder layer: the final norm and the head's weight (head_weight_params);
    a language model's is planner.params.head_params."""
    return final_norm_params(m) + head_weight_params(m, stage)


def stage_layers(num_layers: int, pp: int) -> int:
    """Decoder layers on the most loaded pipeline stage: ceil(L / p)."""
    return -(-num_layers // pp)


@dataclass(frozen=True, slots=True)
class StageParams:
    """Parameters one GPU holds for its pipeline stage and tensor-parallel rank, before sharding."""

    total: float
    trainable: float
    quantized: float  # base weights stored by bitsandbytes
    layers: int  # decoder layers on this stage
    trainable_layers: int  # layers whose activations are saved
    has_head: bool
    has_embedding: bool


def stage_params(cfg: TrainConfig, *, first: bool) -> StageParams:
    m, t, p = cfg.model, cfg.tp, cfg.pp
    layers = stage_layers(m.num_layers, p)
    has_embedding = first or (m.tie_embeddings and p > 1)  # a tied embedding lives on both ends
    has_head = (not first) or p == 1
    total = layers * layer_params(m) / t
    if has_embedding:
        total += embedding_params(m) / t
    if has_head:
        # a reward model ends in its 1-output `score` instead of the LM head (output_params)
        total += output_params(m, cfg.stage) / t
    frozen_layers = min(cfg.freeze_layers, m.num_layers)
    if cfg.method is Method.full:
        trainable = total
        if frozen_layers:
            frozen_here = frozen_layers if p == 1 else (min(frozen_layers, layers) if first else
                                                        max(0, frozen_layers - (m.num_layers - layers)))
            trainable -= frozen_here * layer_params(m) / t + (embedding_params(m) / t if has_embedding else 0)
        trainable_layers = layers if p > 1 else m.num_layers - frozen_layers
        quantized = 0.0
    else:
        trainable = layers * lora_params(m, cfg.lora_r, cfg.lora_targets) / m.num_layers / t
        trainable_layers = layers
        quantized = layers * quantizable_params(m) / m.num_layers / t if cfg.quant is not Quant.none else 0.0
    if cfg.stage is Stage.rm and has_head and cfg.method is not Method.full:
        # the score head trains beside the adapters (peft SEQ_CLS modules_to_save)
        trainable += score_params(m, cfg.stage)
    return StageParams(total=total, trainable=trainable, quantized=quantized, layers=layers,
                       trainable_layers=trainable_layers, has_head=has_head, has_embedding=has_embedding)


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelStates:
    """Bytes per GPU of weights, gradients and optimizer states, and what of them lives on the host."""

    weights: float
    gradients: float
    optimizer: float
    host_weights: float = 0.0
    host_gradients: float = 0.0
    host_optimizer: float = 0.0


@dataclass(frozen=True, slots=True)
class ParamCounts:
    """Parameters of the whole model (every stage and tensor-parallel rank together)."""

    total: int
    trainable: int
    quantized: int  # base weights stored by bitsandbytes


@lru_cache(maxsize=1024)
def param_counts(m: ModelSpec, adapter: Adapter, stage: Stage) -> ParamCounts:
    """Full fine-tuning trains everything but the frozen first layers and the embedding (--freeze-layers);
    LoRA trains its adapters (Hu et al. 2021); a reward model also trains its score head (h weights)."""
    total = total_params(m)
    total += output_params(m, stage) - head_params(m)  # a reward model's score replaces the LM head
    if adapter.method is Method.full:
        trainable = total
        if adapter.freeze_layers:
            trainable -= min(adapter.freeze_layers, m.num_layers) * layer_params(m) + embedding_params(m)
    else:
        trainable = lora_params(m, adapter.lora_r, adapter.lora_targets)
    if adapter.method is not Method.full:
        trainable += score_params(m, stage)
    quantized = quantizable_params(m) if adapter.quant is not Quant.none else 0
    return ParamCounts(total=total, trainable=trainable, quantized=quantized)
