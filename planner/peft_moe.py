"""How peft converts LoRA target names written for transformers v4's per-expert nn.Linear MoE layers to the fused
expert tensors of transformers v5, as data.

transformers >= 5 stores a MoE layer's routed experts as two 3-D parameters (experts.gate_up_proj,
experts.down_proj) and its router as a module with a `weight` parameter. peft 0.21.2 rewrites a LoraConfig at
get_peft_model time (peft/tuners/tuners_utils.py BaseTuner.inject_adapter -> peft/utils/
transformers_weight_conversion.py convert_peft_config_for_transformers -> _convert_peft_config_moe): for the model
types below, a target name equal to (or ending in "." and) a v4 name moves from target_modules to
target_parameters under its v5 name, and the two halves of a fused pair double the rank and alpha of the fused
tensor (rank_pattern / alpha_pattern `.*\\.gate_up_proj`: r * 2, alpha * 2). Half of a fused pair is refused
(ValueError "Cannot convert PEFT target(s) ..."). A target parameter then matches every parameter whose
"module.param" key equals it or ends in "." and it (tuners_utils.py BaseTuner._inject_parameters), so a converted
gate_proj reaches the routed experts only: DeepSeek-V3's dense-layer mlp.gate_proj and shared-expert
mlp.shared_experts.gate_proj (keys ...gate_proj.weight) carry no adapter (measured on a tiny DeepseekV3:
tests/profiler/test_peft_moe_conversion.py).

The tables are peft 0.21.2's `_MOE_TARGET_MODULE_MAPPING` and `_MOE_FUSED_TARGETS`, and the model types are those
of peft's `_MODEL_TO_CONVERSION_PATTERN` (transformers 5.25.0 transformers/conversion_mapping.py's, plus peft's own
"mixtral" entry) whose pattern has a mapping; tests/profiler/test_peft_moe_conversion.py compares them with the
installed peft. Note that "qwen2_moe" itself is not a key of that pattern table, so peft leaves a Qwen2-MoE
config's names alone (its gate_proj adapts the shared expert's nn.Linear; the fused experts get nothing).
"""

from __future__ import annotations

from functools import lru_cache

from planner.errors import PlanError

PEFT_VERSION = "0.21.2"  # the locked peft whose tables these are (requirements-lock.txt)

# _MOE_TARGET_MODULE_MAPPING: pattern -> (v4 target name, v5 target parameter), in peft's order (the first v4 name a
# target equals or ends with wins)
TARGET_MAPPING: dict[str, tuple[tuple[str, str], ...]] = {
    "mixtral": (("gate", "gate.weight"), ("w1", "gate_up_proj"), ("w3", "gate_up_proj"), ("w2", "down_proj")),
    "qwen2_moe": (("gate", "gate.weight"), ("gate_proj", "gate_up_proj"), ("up_proj", "gate_up_proj"),
                  ("down_proj", "down_proj")),
}

# _MOE_FUSED_TARGETS: pattern -> v5 parameter -> the v4 names fused into it (all or none must be targeted)
FUSED_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "mixtral": {"gate_up_proj": ("w1", "w3")},
    "qwen2_moe": {"gate_up_proj": ("gate_proj", "up_proj")},
}

# _MODEL_TO_CONVERSION_PATTERN restricted to the patterns above: config.json model_type -> pattern
MODEL_TYPE_PATTERN: dict[str, str] = {
    **{t: "mixtral" for t in ("minimax", "minimax_m2", "mixtral")},
    **{t: "qwen2_moe" for t in (
        "Dots3NoteTextModel", "UnlimitedOcrTextModel", "afmoe", "beam", "cohere2_moe", "deepseek_v2", "deepseek_v3",
        "deepseek_v32", "dots1", "ernie4_5_moe", "exaone_moe", "flex_olmo", "glm4_moe", "glm4_moe_lite", "glm4v_moe",
        "glm_moe_dsa", "hunyuan_v1_moe", "longcat_flash", "mellum", "olmoe", "qwen3_moe", "qwen3_next",
        "qwen3_omni_moe", "qwen3_omni_moe_text", "qwen3_omni_moe_thinker", "sarvam_mla", "solar_open")},
}


def pattern_of(model_type: str) -> str | None:
    """The conversion pattern peft applies to a model type, or None where it leaves the names alone."""
    return MODEL_TYPE_PATTERN.get(model_type)


def convertible_names(model_type: str) -> tuple[str, ...]:
    """The v4 names a user may write that peft converts for this model type (w1, w2, w3 for Mixtral; gate_proj,
    up_proj, down_proj for Qwen3-MoE, DeepSeek-V3), router `gate` included."""
    pattern = pattern_of(model_type)
    return tuple(old for old, _ in TARGET_MAPPING[pattern]) if pattern else ()


@lru_cache(maxsize=1024)
def convert_targets(model_type: str, targets: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(target modules left, target parameters added) for an explicit target list, as peft converts it; raises
    PlanError with peft's reason for half of a fused pair."""
    pattern = pattern_of(model_type)
    if pattern is None:
        return targets, ()
    modules: list[str] = []
    params: list[str] = []
    present: dict[str, set[str]] = {}
    for target in targets:
        hit = next(((old, new) for old, new in TARGET_MAPPING[pattern]
                    if target == old or target.endswith(f".{old}")), None)
        if hit is None:
            modules.append(target)
            continue
        old, new = hit
        params.append(new)
        present.setdefault(new, set()).add(old)
    for new, required in FUSED_TARGETS[pattern].items():
        have = present.get(new, set())
        if 0 < len(have) < len(required):
            raise PlanError(f"peft cannot convert LoRA target(s) {', '.join(sorted(have))} without also targeting "
                            f"{', '.join(sorted(set(required) - have))}: they are fused into {new} (transformers 5), "
                            f"which peft {PEFT_VERSION} adapts as one; name both")
    return tuple(dict.fromkeys(modules)), tuple(dict.fromkeys(params))


def parameter_key(path: str, *, role: str) -> str:
    """The "module.param" key peft matches target parameters against for a linear of a decoder layer at `path`: a
    fused expert tensor (role "expert") is itself the parameter (mlp.experts.gate_up_proj); any other linear is a
    module whose key is its weight (mlp.gate.weight, DeepSeek-V3's router; peft's all-linear conversion names it
    so). The one rule for the planner (params.py: named targets, targetable names) and the spec derivation (the
    converted and the lone LoRA modes): the derivation records role "expert" for the 3-D parameters of an experts
    module, and only for them (profiler/spec_structure.py `_linears`), so the role says which a path is."""
    return path if role == "expert" else f"{path}.weight"


def parameter_matches(key: str, params: tuple[str, ...]) -> bool:
    """peft's rule (tuners_utils.py BaseTuner._inject_parameters): the key equals a target parameter or ends in "."
    and it."""
    return any(key == p or key.endswith(f".{p}") for p in params)
