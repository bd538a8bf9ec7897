"""Parameter counts, to the parameter, as transformers and peft build them.

Checked against `AutoModelForCausalLM.from_config` on the meta device and peft's
`get_nb_trainable_parameters` in tests/planner/test_params.py.
"""

from __future__ import annotations

from functools import lru_cache

from planner.errors import PlanError
from planner.model_layers import LinearShape
from planner.models import ModelSpec
from planner.peft_moe import TARGET_MAPPING, convert_targets, parameter_key, parameter_matches, pattern_of


def norm_params(m: ModelSpec) -> int:
    """One RMSNorm (weight) or LayerNorm (weight and bias) of width h."""
    return m.hidden_size * (2 if m.layernorm_bias else 1)


def layer_linear_params(m: ModelSpec) -> float:
    """Mean over the layers of the parameters in one layer's linears (all experts)."""
    return sum(lin.layer_share * lin.copies * (lin.in_features * lin.out_features + (lin.out_features if lin.bias
                                                                                       else 0))
               for lin in m.linears())


@lru_cache(maxsize=4096)
def layer_params(m: ModelSpec) -> float:
    """One decoder layer: its linears (all experts) plus its two norms. For a model read from transformers, the
    count transformers builds (every norm, q/k norms, sinks, router biases), averaged over the layers where they
    differ (an int where they do not)."""
    if m.layer_kinds:
        total = sum(k.count * k.params for k in m.layer_kinds)
        return total // m.num_layers if total % m.num_layers == 0 else total / m.num_layers
    return layer_linear_params(m) + 2 * norm_params(m)


def embedding_params(m: ModelSpec) -> int:
    """Input embedding, plus BLOOM's word_embeddings_layernorm and, for a model read from transformers, the
    parameters outside its layers, embedding, final norm and head (counted on the first pipeline stage)."""
    return m.vocab_size * m.hidden_size + (norm_params(m) if m.embedding_norm else 0) + m.extra_params


def head_params(m: ModelSpec) -> int:
    """Final norm plus the LM head when it is not tied to the input embedding."""
    final_norm = m.final_norm_params if m.final_norm_params >= 0 else norm_params(m)
    return final_norm + (0 if m.tie_embeddings else m.vocab_size * m.hidden_size)


@lru_cache(maxsize=4096)
def total_params(m: ModelSpec) -> int:
    if m.layer_kinds:
        return embedding_params(m) + sum(k.count * k.params for k in m.layer_kinds) + head_params(m)
    return embedding_params(m) + m.num_layers * layer_params(m) + head_params(m)


def active_params(m: ModelSpec) -> int:
    """Parameters that touch one token: an MoE layer runs `experts_per_token` of its experts (the model card's
    "active parameters"; how transformers dispatches them is planner/compute.py's concern)."""
    if not m.is_moe:
        return total_params(m)
    if m.layer_kinds:
        inactive = sum(k.count * (lin.in_features + (1 if lin.bias else 0)) * lin.out_features
                       * (lin.copies - k.mlp.top_k) for k in m.layer_kinds for lin in k.linears if lin.role == "expert")
        return total_params(m) - inactive
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


@lru_cache(maxsize=4096)
def quantizable_params(m: ModelSpec) -> float:
    """Weights that bitsandbytes quantizes: every nn.Linear inside the decoder layers (transformers'
    replace_with_bnb_linear; not embeddings, norms, biases, the LM head or a router that is not an nn.Linear).
    Fused expert tensors (transformers >= 5 stores a MoE layer's experts as 3-D parameters) are parameters, not
    nn.Linear modules, so they stay in 16 bits (transformers/integrations/bitsandbytes.py converts nn.Linear)."""
    per_layer = sum(lin.layer_share * lin.in_features * lin.out_features for lin in m.linears()
                    if lin.copies == 1 and lin.lora_targetable and not (lin.name == "gate" and m.is_moe
                                                                         and not m.layer_kinds))
    return m.num_layers * per_layer


ALL_TARGETS = "all"


def targetable_names(m: ModelSpec) -> tuple[str, ...]:
    """The names --lora-targets accepts for a model: its nn.Linear (and routers peft adapts as parameters) by leaf
    name, and the v4 names peft converts to a fused expert tensor the model holds (planner/peft_moe.py: gate_proj,
    up_proj, down_proj for Qwen3-MoE and DeepSeek-V3; w1, w2, w3 for Mixtral)."""
    names = [lin.name for lin in m.linears() if lin.lora_targetable]
    names += [old for old, new in TARGET_MAPPING.get(pattern_of(m.model_type) or "", ())
              if any(parameter_matches(_parameter_key(lin), (new,)) for lin in m.linears())]
    return tuple(dict.fromkeys(names))


def _parameter_key(lin: LinearShape) -> str:
    return parameter_key(lin.path or lin.name, role=lin.role)


@lru_cache(maxsize=4096)
def resolve_lora_targets(m: ModelSpec, targets: tuple[str, ...]) -> tuple[str, ...]:
    """The linears peft adapts, by name. `all` means what peft's target_modules="all-linear" adapts (LLaMA-Factory's
    `lora_target: all`): every nn.Linear of the decoder layers and, for the MoE models peft 0.21 converts, the fused
    expert tensors and the router as parameters (read from peft itself for a derived model). Named targets go
    through peft's MoE conversion first (planner/peft_moe.py): a v4 expert name becomes the fused tensor it maps
    to (gate_proj and up_proj: experts.gate_up_proj at twice the rank; down_proj: experts.down_proj), and no
    nn.Linear of that name is adapted (DeepSeek-V3's dense and shared-expert MLPs); half a fused pair is refused
    with peft's reason."""
    if targets == (ALL_TARGETS,) or not targets:
        return tuple(dict.fromkeys(lin.name for lin in m.linears() if lin.all_linear))
    available = targetable_names(m)
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise PlanError(f"LoRA target {', '.join(unknown)} is not a linear module of {m.name} "
                        f"(its linears: {', '.join(available)}, or 'all')")
    modules, params = convert_targets(m.model_type, targets)
    return tuple(dict.fromkeys(lin.name for lin in m.linears()
                               if (lin.name in modules and lin.lora_targetable)
                               or (params and parameter_matches(_parameter_key(lin), params))))


@lru_cache(maxsize=4096)
def lora_params(m: ModelSpec, r: int, targets: tuple[str, ...]) -> int:
    """peft LoRA adds A (r x in) and B (out x r) per targeted linear, no bias (Hu et al. 2021)."""
    per_layer = sum(lin.layer_share * r * lin.lora_params_per_rank() for lin in adapted_linears(m, targets))
    total = m.num_layers * per_layer
    return round(total)


@lru_cache(maxsize=4096)
def adapted_linears(m: ModelSpec, targets: tuple[str, ...]) -> tuple[LinearShape, ...]:
    """The linears peft adapts, each once with the share of the decoder layers that hold it (`layer_share`): a target
    name reaches every linear of that name peft can adapt (peft/tuners/tuners_utils.py BaseTuner.inject_adapter
    matches target_modules by module-name suffix, target_parameters by `parameter_matches`), and a layer holds only
    its own kind's linears (DeepSeek-V3's dense layers hold no experts, its MoE layers no dense MLP)."""
    chosen = set(resolve_lora_targets(m, targets))
    return tuple(lin for lin in m.linears() if lin.name in chosen and (lin.lora_targetable or lin.all_linear))


@lru_cache(maxsize=4096)
def adapted_per_layer(m: ModelSpec, targets: tuple[str, ...]) -> tuple[float, float]:
    """(nn.Linear modules, parameters) peft adapts in a mean decoder layer, each weighted by its `layer_share`: the
    first become a lora.Linear (peft/tuners/lora/layer.py Linear), the second a ParamWrapper (fused expert tensors,
    routers that are not nn.Linear; two wrappers, nested, on an experts module whose two tensors are both
    adapted). Counted on tiny DeepSeek-V3 (first_k_dense_replace), Qwen3-MoE (mlp_only_layers), Llama 4
    (interleave_moe_layer_step 2) and gpt-oss models: tests/profiler/test_layer_share_counts.py."""
    adapted = adapted_linears(m, targets)
    return (sum(lin.layer_share for lin in adapted if not lin.lora_param),
            sum(lin.layer_share for lin in adapted if lin.lora_param))


def lora_tensor_elements(lin: LinearShape, r: int) -> tuple[float, float]:
    """Elements of the lora_A and lora_B tensors peft gives one adapted linear: r x in and out x r for an nn.Linear
    (peft/tuners/lora/layer.py LoraLayer.update_layer); one (r' e) x in and one out x (r' e) tensor for a fused
    tensor of e experts (ParamWrapper.update_layer; r' = 2r on a converted gate_up_proj, `lora_per_rank`), read off a
    tiny DeepSeek-V3 (mlp.experts.lora_A (r' e, h), lora_B (2i, r' e))."""
    rank = r * lin.lora_params_per_rank() / (lin.in_features + lin.out_features)  # r' e, or r for an nn.Linear
    return rank * lin.in_features, rank * lin.out_features


def adapted_count(m: ModelSpec, targets: tuple[str, ...]) -> float:
    """Targets (nn.Linear and parameters) peft adapts in a mean decoder layer (`adapted_per_layer`)."""
    return sum(adapted_per_layer(m, targets))


def wrapped_lora_targets(m: ModelSpec, targets: tuple[str, ...]) -> list[str]:
    """The chosen targets peft adapts as parameters (ParamWrapper, peft/tuners/lora/layer.py): fused expert tensors
    and routers that are not nn.Linear. peft 0.21's target_modules="all-linear" includes them for the MoE families
    whose checkpoints transformers converts (peft/utils/transformers_weight_conversion.py _convert_peft_config_moe:
    Mixtral, Qwen2/3-MoE, DeepSeek-V3 move the v4 expert and router names to `target_parameters`); gpt-oss's and
    Llama 4's experts are not nn.Linear and stay out of all-linear."""
    chosen = set(resolve_lora_targets(m, targets))
    return list(dict.fromkeys(lin.name for lin in m.linears() if lin.lora_param and lin.name in chosen))


def lora_dropout_for(m: ModelSpec, targets: tuple[str, ...], requested: float | None, default: float) -> float:
    """The LoRA dropout a plan uses: the user's, or else ftplan's default where peft can drop out every target and 0
    where it adapts one as a parameter (a ParamWrapper has no dropout, `lora_dropout_problem`): a plan for a MoE
    model's all-linear LoRA, not a refusal of a value the user never gave."""
    if requested is not None:
        return requested
    return 0.0 if wrapped_lora_targets(m, targets) else default


def lora_dropout_problem(m: ModelSpec, targets: tuple[str, ...], dropout: float) -> str | None:
    """peft adapts fused expert tensors and routers that are not nn.Linear as parameters (ParamWrapper), and a
    ParamWrapper refuses lora_dropout > 0 (peft/tuners/lora/layer.py ParamWrapper.__init__: dropout cannot be
    factored out of W + B A)."""
    if dropout <= 0:
        return None
    wrapped = wrapped_lora_targets(m, targets)
    if not wrapped:
        return None
    return (f"peft adapts {', '.join(wrapped)} of {m.name} as parameters, which refuse lora_dropout > 0: use "
            f"--lora-dropout 0 (its default for these targets), or --lora-targets without them")


def lora_dropout_note(m: ModelSpec, targets: tuple[str, ...], dropout: float) -> str | None:
    """What a LoRA plan without dropout on parameter-wrapped targets says about it (the plan's report, the emitted
    files' headers)."""
    wrapped = wrapped_lora_targets(m, targets) if dropout <= 0 else []
    if not wrapped:
        return None
    return (f"LoRA dropout 0: peft adapts {', '.join(wrapped)} of {m.name} as parameters (ParamWrapper), which take "
            "no dropout; ftplan's default dropout 0.05 applies where every target is an nn.Linear")


def _broken_all_linear(m: ModelSpec) -> list[LinearShape]:
    """The linears peft's all-linear adapts and its LoRA fails on (`lora_error`, found when the spec was derived)."""
    return [lin for lin in m.linears() if lin.all_linear and lin.lora_error]


@lru_cache(maxsize=256)
def default_lora_targets(m: ModelSpec) -> tuple[str, ...]:
    """The LoRA targets planned when --lora-targets is not given: peft's all-linear (`all`, which the emitted files
    pass on as target_modules="all-linear"), or, where peft's LoRA fails on a linear all-linear adapts (measured
    when the spec was derived: Llama 4's router returns a tuple), the others by name, so that the plan and the
    emitted files adapt the linears peft can run."""
    broken = {lin.name for lin in _broken_all_linear(m)}
    if not broken:
        return (ALL_TARGETS,)
    return tuple(dict.fromkeys(lin.name for lin in m.linears()
                               if lin.all_linear and lin.lora_targetable and lin.name not in broken))


def lora_targets_note(m: ModelSpec, targets: tuple[str, ...]) -> str | None:
    """What a LoRA plan on ftplan's default targets says where they are not peft's all-linear (the reports, the JSON,
    the emitted files' headers)."""
    if targets == (ALL_TARGETS,) or targets != default_lora_targets(m):
        return None
    broken = _broken_all_linear(m)
    names = ", ".join(dict.fromkeys(lin.name for lin in broken))
    return (f"LoRA targets {','.join(targets)}: peft's all-linear without {names}, on which peft's LoRA fails in "
            f"{m.name} ({broken[0].lora_error}); --lora-targets names others")


def lora_target_problem(m: ModelSpec, targets: tuple[str, ...]) -> str | None:
    """A target peft adapts but cannot run (found by running it on fake tensors when the spec was derived: Llama
    4's router is an nn.Linear subclass that returns a tuple, which peft's LoRA Linear cannot add to)."""
    chosen = set(resolve_lora_targets(m, targets))
    broken = [lin for lin in m.linears() if lin.lora_error and lin.name in chosen]
    if not broken:
        return None
    fine = [n for n in dict.fromkeys(lin.name for lin in m.linears() if lin.lora_targetable and not lin.lora_error)]
    return (f"peft's LoRA fails on {broken[0].name} of {m.name} ({broken[0].lora_error}): name the targets without "
            f"it, e.g. --lora-targets {','.join(fine)}")
