"""The GPU check's real-step plans (profiler/gpu_check.py): full-size models on one card, cheapest first, each with the
terms it tests that only a GPU can confirm (README, "What only a GPU can confirm"); and the smoke run's tiny ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.strategy import GradCkpt, Method, Precision


@dataclass(frozen=True, kw_only=True)
class StepPlan:
    """One real-step plan: its options (build_config's names) and why it is here."""

    label: str  # a file-safe id, `--plans` names it
    model: str
    method: Method
    micro_batch: int
    seq_len: int
    grad_ckpt: GradCkpt = GradCkpt.none
    precision: Precision = Precision.bf16_mixed
    tests: str  # the terms it tests that only a GPU can confirm
    # the wall time it may take on an H100 (torchrun and the worker's imports, about 15 s; the model built on the
    # GPU; a warm-up and the measured steps at ftplan's step time): it runs only when the budget has this much left
    needs_s: float


# Cheapest first: the budget decides how many run. Memory by `ftplan estimate --gpus 1xH100` (fit_bytes): 31.9,
# 30.1 (Qwen3-4B), 30.1 (Gemma 3 4B), 31.0 and 20.1 GB: every plan fits an H100's 80 GB.
GPU_PLANS: tuple[StepPlan, ...] = (
    StepPlan(label="llama32-1b-full-mb2", model="llama-3.2-1b", method=Method.full, micro_batch=2, seq_len=2048,
             tests="full fine-tuning bf16-mixed AdamW: fp32 master weights and states, a 128k vocabulary's loss; the "
                   "allocator's reserve and the CUDA context (the three readings, issue 24)", needs_s=60.0),
    StepPlan(label="qwen3-4b-lora-mb1", model="qwen3-4b", method=Method.lora, micro_batch=1, seq_len=2048,
             tests="a new family: Qwen3 (q/k norms, GQA 32/8), LoRA on every linear, SDPA", needs_s=60.0),
    StepPlan(label="gemma3-4b-lora-mb1", model="gemma-3-4b", method=Method.lora, micro_batch=1, seq_len=2048,
             tests="a new family: Gemma 3 (262k vocabulary, head size 256, sliding-window layers), LoRA", needs_s=60.0),
    StepPlan(label="llama2-7b-lora-mb1", model="llama-2-7b", method=Method.lora, micro_batch=1, seq_len=2048,
             tests="LoRA bf16 SDPA without checkpointing: the saved set per layer; sustained GEMM and FlashAttention "
                   "time (issue 27)", needs_s=75.0),
    StepPlan(label="llama2-7b-lora-ckpt-mb4", model="llama-2-7b", method=Method.lora, micro_batch=4, seq_len=2048,
             grad_ckpt=GradCkpt.full, tests="full checkpointing at micro-batch 4: the recompute's time and what a "
                                            "checkpointed layer keeps", needs_s=90.0),
)

# --smoke: the same phases on this machine's CPU, on 2-layer models of the plans' three families built from these
# configs (no download): the catalog's configs (planner/model_specs, profiler/dryrun.py HF_CONFIGS) scaled down
SMOKE_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256,
                   "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 4, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
                   "tie_word_embeddings": False},
    "tiny-qwen3": {"model_type": "qwen3", "vocab_size": 256, "head_dim": 16, "hidden_size": 64,
                   "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "tiny-gemma3": {"model_type": "gemma3_text", "vocab_size": 256, "head_dim": 32, "query_pre_attn_scalar": 32,
                    "sliding_window": 16, "sliding_window_pattern": 2, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                    "max_position_embeddings": 128, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
                    "tie_word_embeddings": True},
}
SMOKE_PLANS: tuple[StepPlan, ...] = (
    StepPlan(label="tiny-llama-full", model="tiny-llama", method=Method.full, micro_batch=2, seq_len=32,
             precision=Precision.fp32, tests="the smoke run's full fine-tuning", needs_s=60.0),
    StepPlan(label="tiny-qwen3-lora", model="tiny-qwen3", method=Method.lora, micro_batch=2, seq_len=32,
             precision=Precision.fp32, tests="the smoke run's LoRA of a Qwen3", needs_s=60.0),
    StepPlan(label="tiny-gemma3-lora-ckpt", model="tiny-gemma3", method=Method.lora, micro_batch=2, seq_len=32,
             grad_ckpt=GradCkpt.full, precision=Precision.fp32,
             tests="the smoke run's LoRA of a Gemma 3, checkpointed", needs_s=60.0),
)
