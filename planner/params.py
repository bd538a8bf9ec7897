"""Parameter counts, to the parameter, as transformers and peft build them.

Checked against `AutoModelForCausalLM.from_config` on the meta device and peft's
`get_nb_trainable_parameters` in tests/planner/test_params.py.
"""

from __future__ import annotations

from functools import lru_cache

from planner.errors import PlanError
from planner.models import ModelSpec


def norm_params(m: ModelSpec) -> int:
    """One RMSNorm (weight) or LayerNorm (weight and bias) of width h."""
    return m.hidden_size * (2 if m.layernorm_bias else 1)


def layer_linear_params(m: ModelSpec) -> int:
    return sum(lin.copies * (lin.in_features * lin.out_features + (lin.out_features if lin.bias else 0))
               for lin in m.linears())


@lru_cache(maxsize=4096)
def layer_params(m: ModelSpec) -> int:
    """One decoder layer: its linears (all experts) plus its two norms."""
    return layer_linear_params(m) + 2 * norm_params(m)


def embedding_params(m: ModelSpec) -> int:
    """Input embedding, plus BLOOM's word_embeddings_layernorm."""
    return m.vocab_size * m.hidden_size + (norm_params(m) if m.embedding_norm else 0)


def head_params(m: ModelSpec) -> int:
    """Final norm plus the LM head when it is not tied to the input embedding."""
    return norm_params(m) + (0 if m.tie_embeddings else m.vocab_size * m.hidden_size)


@lru_cache(maxsize=4096)
def total_params(m: ModelSpec) -> int:
    return embedding_params(m) + m.num_layers * layer_params(m) + head_params(m)


def active_params(m: ModelSpec) -> int:
    """Parameters that touch one token: an MoE layer runs `experts_per_token` of its experts."""
    if not m.is_moe:
        return total_params(m)
    expert = sum(lin.in_features * lin.out_features for lin in m.linears() if lin.copies > 1)
    inactive = m.num_layers * expert * (m.num_experts - m.experts_per_token)
    return total_params(m) - inactive


def largest_layer_params(m: ModelSpec) -> int:
    """Largest parameter count held directly by one module, as DeepSpeed's ZeRO-3 estimator takes it
    (`estimate_zero3_model_states_mem_needs_all_live` in deepspeed/runtime/zero/stage3.py)."""
    biggest_linear = max(lin.in_features * lin.out_features + (lin.out_features if lin.bias else 0)
                         for lin in m.linears() if lin.copies == 1)
    experts = max((lin.copies * lin.in_features * lin.out_features for lin in m.linears() if lin.copies > 1),
                   default=0)
    return max(m.vocab_size * m.hidden_size, biggest_linear, experts)


def quantizable_params(m: ModelSpec) -> int:
    """Weights that bitsandbytes quantizes: every linear inside the decoder layers (not embeddings,
    norms, biases, the LM head or the MoE router, which transformers keeps in 16 bits)."""
    per_layer = sum(lin.copies * lin.in_features * lin.out_features for lin in m.linears() if lin.name != "gate"
                    or not m.is_moe)
    return m.num_layers * per_layer


ALL_TARGETS = "all"


def resolve_lora_targets(m: ModelSpec, targets: tuple[str, ...]) -> tuple[str, ...]:
    """`all` means every nn.Linear of the decoder layers (LLaMA-Factory's `lora_target: all`)."""
    available = [lin.name for lin in m.linears() if lin.lora_targetable]
    if targets == (ALL_TARGETS,) or not targets:
        return tuple(available)
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise PlanError(f"LoRA target {', '.join(unknown)} is not a linear module of {m.name} "
                        f"(its linears: {', '.join(available)}, or 'all')")
    return targets


@lru_cache(maxsize=4096)
def lora_params(m: ModelSpec, r: int, targets: tuple[str, ...]) -> int:
    """peft LoRA adds A (r x in) and B (out x r) per targeted linear, no bias (Hu et al. 2021)."""
    chosen = set(resolve_lora_targets(m, targets))
    per_layer = sum(lin.copies * r * (lin.in_features + lin.out_features)
                    for lin in m.linears() if lin.name in chosen)
    return m.num_layers * per_layer
