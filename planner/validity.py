"""Which configurations can run, with the reason when one cannot. `problems` is pure and fast (the
search calls it for every candidate); `validate` raises the first problem as a PlanError. Which
engine / ZeRO / offload combinations exist is settled when the config is built (strategy.EngineChoice);
the rules of each engine and of TP/PP live in planner/engines/."""

from __future__ import annotations

from planner import engines
from planner.engines import parallel
from planner.errors import PlanError
from planner.gpus import flash_attention_2_problem
from planner.models import ModelSpec
from planner.params import lora_dropout_problem, lora_target_problem
from planner.rl.settings import is_online_rl
from planner.strategy import Attn, Method, Optimizer, Precision, Quant, Stage, TrainConfig

# transformers' attention implementation behind each --attn choice (planner.models.ModelSpec.attn_kernels)
ATTN_KERNEL = {Attn.eager: "eager", Attn.sdpa: "sdpa", Attn.flash: "flash"}


def problems(cfg: TrainConfig) -> list[str]:
    m, out = cfg.model, []
    for name, value in (("micro-batch", cfg.micro_batch), ("grad-accum", cfg.grad_accum), ("seq-len", cfg.seq_len),
                        ("tp", cfg.tp), ("pp", cfg.pp), ("lora-r", cfg.lora_r)):
        if value < 1:
            out.append(f"--{name} must be at least 1, got {value}")
    if out:
        return out
    out += parallel.problems(cfg)
    if cfg.seq_len > m.max_seq_len:
        out.append(f"--seq-len {cfg.seq_len} exceeds the {m.max_seq_len} positions of {m.name} "
                   "(add --rope-scaling, e.g. linear:2.0)")
    out += method_problems(cfg)
    out += attention_problems(cfg)
    out += document_problems(cfg)
    if not cfg.cluster.gpu.supports_bf16 and cfg.precision in (Precision.bf16_mixed, Precision.bf16_true):
        out.append(f"{cfg.cluster.gpu.name} has no bf16 support: use --precision 16-mixed")
    if cfg.fused_adamw and cfg.optimizer is not Optimizer.adamw:
        out.append(f"--fused-adamw is torch's AdamW kernel: it needs --optimizer adamw, not {cfg.optimizer.value}")
    if is_online_rl(cfg.stage):
        from planner.rl.validity import rl_problems

        out += rl_problems(cfg)
    return out + engines.of(cfg).problems(cfg)


def method_problems(cfg: TrainConfig) -> list[str]:
    m, out = cfg.model, []
    if cfg.method is Method.qlora and cfg.quant is Quant.none:
        out.append("QLoRA needs --quant nf4 or int8")
    if cfg.method is not Method.qlora and cfg.quant is not Quant.none:
        out.append(f"--quant {cfg.quant.value} quantizes frozen base weights: use --method qlora")
    if cfg.method is Method.qlora and cfg.tp > 1:
        out.append("bitsandbytes-quantized weights cannot be split by tensor parallelism")
    if cfg.freeze_layers and cfg.method is not Method.full:
        out.append("--freeze-layers applies to full fine-tuning; LoRA already freezes the base model")
    if cfg.freeze_layers >= m.num_layers:
        out.append(f"--freeze-layers {cfg.freeze_layers} leaves none of the {m.num_layers} layers to train")
    if cfg.trains_adapter and cfg.stage.value not in ("rm", "dpo"):  # TRL's trainers set dropout to 0
        dropout = lora_dropout_problem(m, cfg.lora_targets, cfg.lora_dropout)
        if dropout:
            out.append(dropout)
    if cfg.trains_adapter:
        broken = lora_target_problem(m, cfg.lora_targets)
        if broken:
            out.append(broken)
    return out


def attention_problems(cfg: TrainConfig) -> list[str]:
    """An attention implementation the model's transformers class does not take (gpt-oss has no SDPA path: its
    attention sinks are not an SDPA argument; transformers refuses `attn_implementation="sdpa"` for it), or
    FlashAttention-2 on a board older than Ampere (V100, T4: planner/gpus.py flash_attention_2_problem)."""
    m = cfg.model
    if cfg.attn is Attn.flash:
        board = flash_attention_2_problem(cfg.cluster.gpu)
        if board:
            return [board]
    if ATTN_KERNEL[cfg.attn] in m.attn_kernels:
        return []
    others = [a.value for a, k in ATTN_KERNEL.items() if k in m.attn_kernels]
    return [f"{m.name} has no {cfg.attn.value} attention in transformers ({m.causal_lm_class or m.model_type} takes "
            f"{', '.join(others)}): use --attn {others[-1]}"]


def default_attn(m: ModelSpec) -> Attn:
    """The attention transformers picks when none is named: SDPA where the model's class has that path, else eager
    (transformers 5.25 modeling_utils.py PreTrainedModel._check_and_adjust_attn_implementation; gpt-oss has no SDPA
    path, and OpenAI's gpt-oss fine-tuning cookbook runs it eager). What every command plans when --attn is not
    given (planner.build.config_from) and what `plan` searches without --attns (planner.search.search_space)."""
    return Attn.sdpa if ATTN_KERNEL[Attn.sdpa] in m.attn_kernels else Attn.eager


def attention_note(cfg: TrainConfig) -> str | None:
    """What a plan on a model without SDPA says about its attention (the reports, the JSON, the emitted files)."""
    m = cfg.model
    if ATTN_KERNEL[Attn.sdpa] in m.attn_kernels or cfg.attn is not default_attn(m):
        return None
    return (f"attention {cfg.attn.value}: {m.causal_lm_class or m.model_type} has no sdpa path in transformers, and "
            f"eager is what transformers picks for {m.name} when none is named (--attn flash for FlashAttention-2)")


def document_problems(cfg: TrainConfig) -> list[str]:
    """--doc-len: documents of 1 to seq_len tokens, packed for SFT or pre-training (the preference and RL trainers
    batch their own pairs and completions). Every attention is planned with them: FlashAttention-2's varlen kernel
    per document, eager attention over the whole s x s, SDPA over every block with the packed sequences'
    materialized mask, which each layer keeps (planner/activations.py sdpa_packed_mask_bytes_per_token,
    planner/kernels.py flash_attention_s)."""
    d = cfg.doc_len
    if d is None:
        if cfg.collator_mask:
            return ["--collator-mask plans the packed documents' mask a collator builds: it needs --doc-len"]
        return []
    if not 1 <= d <= cfg.seq_len:
        return [f"--doc-len must be between 1 and --seq-len {cfg.seq_len}, got {d}"]
    if cfg.stage not in (Stage.sft, Stage.pt):
        return [f"--doc-len packs documents for sft or pt; the {cfg.stage.value} trainer batches its own sequences"]
    return []


def validate(cfg: TrainConfig) -> TrainConfig:
    found = problems(cfg)
    if found:
        raise PlanError(found[0])
    return cfg
