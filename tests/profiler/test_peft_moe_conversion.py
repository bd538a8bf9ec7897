"""planner/peft_moe.py against the installed peft: its tables are peft's own, and on tiny Qwen3-MoE, DeepSeek-V3 and
Mixtral models the linears and parameters peft adapts for a target list (get_peft_model, as the runner calls it with
the user's names) are the ones ftplan resolves, with the same LoRA parameter count in every layer.

Found here: peft moves gate_proj / up_proj / down_proj (Mixtral: w1 / w3 / w2) to target_parameters on the fused
experts, so DeepSeek-V3's dense-layer and shared-expert MLPs, whose linears carry those names, get no adapter."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from derived_specs import derived
from tiny_moe import DEEPSEEK_V3, GPT_OSS, LLAMA4, MIXTRAL, QWEN3_MOE

from planner.models import spec_from_dict, spec_from_hf_config
from planner.params import resolve_lora_targets
from planner.peft_moe import FUSED_TARGETS, MODEL_TYPE_PATTERN, PEFT_VERSION, TARGET_MAPPING

pytestmark = pytest.mark.filterwarnings("ignore")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def test_the_registry_is_the_installed_peft_tables() -> None:
    from peft.utils import transformers_weight_conversion as conv

    assert peft.__version__ == PEFT_VERSION
    assert {p: dict(pairs) for p, pairs in TARGET_MAPPING.items()} == conv._MOE_TARGET_MODULE_MAPPING
    assert {p: list(pairs) for p, pairs in TARGET_MAPPING.items()} == {
        p: list(m.items()) for p, m in conv._MOE_TARGET_MODULE_MAPPING.items()}  # peft's order: the first match wins
    assert {p: {k: list(v) for k, v in f.items()} for p, f in FUSED_TARGETS.items()} == conv._MOE_FUSED_TARGETS
    patterns = {t: p for t, p in conv._MODEL_TO_CONVERSION_PATTERN.items() if p in conv._MOE_TARGET_MODULE_MAPPING}
    assert patterns == MODEL_TYPE_PATTERN
    # peft converts only where transformers has a checkpoint conversion for the type
    assert all(conv.get_checkpoint_conversion_mapping(t) is not None for t in MODEL_TYPE_PATTERN)


def _ftplan_spec(raw: dict):  # noqa: ANN202
    if raw["model_type"] == "mixtral":  # a hand-written family
        return spec_from_hf_config(dict(raw), name="tiny")
    return spec_from_dict(derived(raw, name="tiny", activations=False)["spec"], name="tiny", source="test")


def _peft_adapted(raw: dict, targets: tuple[str, ...], r: int) -> tuple[dict[int, set[str]], Counter]:
    """Per layer: the module and parameter paths (inside the layer) peft adapts, and its LoRA parameters."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(raw["model_type"], **{k: v for k, v in raw.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                                         target_modules=list(targets)))
    tuner = wrapped.base_model
    paths: dict[int, set[str]] = {}
    layer = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
    for name in [*tuner.targeted_module_names, *tuner.targeted_parameter_names]:
        index, inner = layer.search(name).groups()
        paths.setdefault(int(index), set()).add(inner.removesuffix(".weight"))
    counts: Counter = Counter()
    for name, p in wrapped.named_parameters():
        if "lora_" in name:
            counts[int(layer.search(name).group(1))] += p.numel()
    return paths, counts


CASES = [
    (QWEN3_MOE, ("q_proj", "gate_proj", "up_proj", "down_proj")),
    (QWEN3_MOE, ("down_proj", "gate")),
    (DEEPSEEK_V3, ("gate_proj", "up_proj", "down_proj")),
    (DEEPSEEK_V3, ("q_a_proj", "kv_b_proj", "gate_proj", "up_proj")),
    (MIXTRAL, ("q_proj", "w1", "w3", "w2")),
    (MIXTRAL, ("o_proj", "gate")),
]


@pytest.mark.parametrize(("raw", "targets"), CASES,
                         ids=[f"{raw['model_type']}-{'+'.join(t)}" for raw, t in CASES])
def test_peft_adapts_what_ftplan_resolves(raw: dict, targets: tuple[str, ...]) -> None:
    r = 4
    m = _ftplan_spec(raw)
    chosen = set(resolve_lora_targets(m, targets))
    peft_paths, peft_counts = _peft_adapted(raw, targets, r)
    kinds = m.layer_kinds or ()
    for index in range(m.num_layers):
        kind = next((k for k in kinds if k.first <= index < k.first + k.count), None)
        linears = kind.linears if kind else m.linears()
        ours = [lin for lin in linears if lin.name in chosen]
        # hand-written specs name linears without their path: peft's path ends with the name
        assert len(ours) == len(peft_paths.get(index, set())), (index, [lin.name for lin in ours], peft_paths)
        for lin in ours:
            key = lin.path or lin.name
            assert any(p == key or p.endswith(f".{key}") for p in peft_paths[index]), (index, key, peft_paths)
        assert sum(r * lin.lora_params_per_rank() for lin in ours) == peft_counts[index], index


def test_deepseek_dense_and_shared_expert_mlps_get_nothing() -> None:
    paths, counts = _peft_adapted(DEEPSEEK_V3, ("gate_proj", "up_proj", "down_proj"), 4)
    assert 0 not in paths and counts[0] == 0  # the dense layer
    assert paths[1] == paths[2] == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}


def test_half_a_pair_is_refused_by_peft_as_by_ftplan() -> None:
    from planner.errors import PlanError

    with pytest.raises(ValueError, match="Cannot convert PEFT target.* gate_proj without also targeting up_proj"):
        _peft_adapted(QWEN3_MOE, ("q_proj", "gate_proj"), 4)
    with pytest.raises(PlanError, match="gate_proj without also targeting up_proj"):
        resolve_lora_targets(_ftplan_spec(QWEN3_MOE), ("q_proj", "gate_proj"))


def test_the_derivation_measures_the_converted_selection() -> None:
    """profiler/spec_derive.py measures each tensor the conversion adapts through the names a user writes (its own
    group and table), and no group of the linears peft cannot reach by name (their names are converted): LoRA on a
    fused tensor keeps the merged experts W + B A, e in out 16-bit bytes per MoE layer under mixed precision."""
    h, i, e = DEEPSEEK_V3["hidden_size"], DEEPSEEK_V3["moe_intermediate_size"], DEEPSEEK_V3["n_routed_experts"]
    dense, moe = derived(DEEPSEEK_V3, name="tiny")["spec"]["layer_kinds"]
    assert not any(lin.get("group") for lin in dense["linears"] if lin["path"].startswith("mlp."))
    assert not any(lin.get("group") for lin in moe["linears"] if "shared_experts" in lin["path"])
    table = moe["saved"]["mixed"]
    frozen = table["frozen"][3]
    assert table["lora:mlp.experts.gate_up_proj"][3] - frozen == e * h * 2 * i * 2
    assert table["lora:mlp.experts.down_proj"][3] - frozen == e * i * h * 2
    assert not any(key.startswith("lora") and "mlp." in key for key in dense["saved"]["mixed"] if key != "lora_all")


@pytest.mark.parametrize("raw", [DEEPSEEK_V3, QWEN3_MOE, LLAMA4, GPT_OSS], ids=lambda raw: raw["model_type"])
def test_the_parameter_key_rule_names_the_models_own_parameters(raw: dict) -> None:
    """planner/peft_moe.py `parameter_key`, the one rule the planner and the derivation use for the key peft matches
    target parameters against (a fused expert tensor itself, any other linear its module's weight), names a
    parameter the built model has, in the layers of each kind: the check the derivation's lone LoRA mode made on
    the model before it used the rule."""
    from planner.peft_moe import parameter_key
    from profiler.spec_structure import build_meta_model, load_config

    loaded = load_config(dict(raw), name="t")
    model = build_meta_model(loaded, name="t")
    names = {name for name, _ in model.named_parameters()}
    for kind in derived(raw, name="tiny", activations=False)["spec"]["layer_kinds"]:
        for lin in kind["linears"]:
            key = parameter_key(lin["path"], role=lin["role"])
            assert any(n.endswith(f"layers.{kind['first']}.{key}") for n in names), (kind["first"], key)
