"""Per-layer counts on models whose layers differ (planner.params.adapted_per_layer, planner.collectives): built on the
CPU from transformers' config classes and wrapped by peft as the runner wraps them (get_peft_model, task_type
CAUSAL_LM), the trainable tensors, the modules that own parameters and the modules a forward calls (whose ZeRO-3
hooks run) that LoRA adds are the planner's, each adapted linear or parameter counted in the layers that hold it:
DeepSeek-V3's dense-first layers hold no experts and its MoE layers no dense MLP, Qwen3-MoE's mlp_only_layers are
dense, Llama 4 interleaves its MoE layers (interleave_moe_layer_step 2), gpt-oss alternates its attention.

A lora.Linear adds four called modules (the wrapper, lora_dropout, lora_A, lora_B), a ParamWrapper one (it reads
lora_A's and lora_B's weights in a parametrization); both add two modules that own a parameter (lora_A, lora_B).

A full fine-tune's counts are the model's own: the modules a forward calls as the derivation measures them per layer
kind (DeepSeek-V3's MoE layer calls its shared expert and two `act_fn`, gpt-oss's experts none, Llama 4's interleaved
layers their own), the modules owning a parameter and the parameter tensors (gpt-oss's `self_attn.sinks`)."""

from __future__ import annotations

import pytest
from derived_specs import derived
from tiny_moe import DEEPSEEK_V3, GPT_OSS, LLAMA4, MIXTRAL, QWEN3_MOE

from planner import collectives as col
from planner.choices import Method
from planner.models import spec_from_dict, spec_from_hf_config
from planner.params import adapted_per_layer, lora_params

pytestmark = pytest.mark.filterwarnings("ignore")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

QWEN3_MOE_DENSE_FIRST = {**QWEN3_MOE, "num_hidden_layers": 3, "mlp_only_layers": [0]}
LLAMA4_INTERLEAVED = {**LLAMA4, "num_hidden_layers": 4}  # layers 1 and 3 hold the experts
R = 4


def _spec(raw: dict):  # noqa: ANN202
    if raw["model_type"] == "mixtral":  # a hand-written family
        return spec_from_hf_config(dict(raw), name="tiny")
    return spec_from_dict(derived(raw, name="tiny", activations=False)["spec"], name="tiny", source="test")


_TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 4, "head_dim": 16, "max_position_embeddings": 256}
# the dense families the catalog derives (planner/model_specs): their counts were right before and must stay
QWEN3 = {**_TINY, "model_type": "qwen3", "num_hidden_layers": 2, "num_key_value_heads": 2}
PHI3 = {**_TINY, "model_type": "phi3", "num_hidden_layers": 2, "pad_token_id": 0}
OLMO2 = {**_TINY, "model_type": "olmo2", "num_hidden_layers": 2}


def _counts(raw: dict, targets: tuple[str, ...] | None) -> dict[str, int]:
    """The model's modules called in one forward, modules owning a parameter, trainable tensors and LoRA elements."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(raw["model_type"], **{k: v for k, v in raw.items() if k != "model_type"})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float()
    if targets is not None:
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=R, lora_alpha=2 * R, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules="all-linear" if targets == ("all",) else list(targets)))
    called: set[int] = set()
    for mod in model.modules():
        mod.register_forward_pre_hook(lambda mod, args: called.add(id(mod)))
    ids = torch.randint(0, raw["vocab_size"], (1, 8))
    with torch.no_grad():
        model(input_ids=ids)
    return {"called": len(called),
            "owners": sum(1 for mod in model.modules() if next(mod.parameters(recurse=False), None) is not None),
            "trainable": sum(1 for p in model.parameters() if p.requires_grad),
            "lora": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)}


CASES = [
    (DEEPSEEK_V3, ("all",)),
    (DEEPSEEK_V3, ("q_a_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate")),
    (QWEN3_MOE_DENSE_FIRST, ("all",)),
    (QWEN3_MOE_DENSE_FIRST, ("q_proj", "gate_proj", "up_proj", "down_proj")),
    # Llama 4's router returns a tuple, on which peft's LoRA fails (lora_target_problem): its other linears
    (LLAMA4_INTERLEAVED, ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    (GPT_OSS, ("all",)),
    # every layer alike: the router and the two fused expert tensors are ParamWrappers
    (MIXTRAL, ("all",)),
]


@pytest.mark.parametrize(("raw", "targets"), CASES,
                         ids=[f"{raw['model_type']}-{'-'.join(t)}" for raw, t in CASES])
def test_lora_counts_are_those_of_the_layers_that_hold_each_target(raw: dict, targets: tuple[str, ...]) -> None:
    m = _spec(raw)
    layers = m.num_layers
    if raw not in (GPT_OSS, MIXTRAL):
        assert {kind.mlp.kind for kind in m.layer_kinds} == {"dense", "moe"}
    full, lora = _counts(raw, None), _counts(raw, targets)
    assert col.trainable_tensors(m, layers, Method.lora, targets) == lora["trainable"]
    assert lora_params(m, R, targets) == lora["lora"]
    added_owners = col.param_modules(m, layers, Method.lora, targets) - col.param_modules(m, layers, Method.full, ())
    assert added_owners == lora["owners"] - full["owners"]
    added_called = col.zero3_modules(m, layers, Method.lora, targets) - col.zero3_modules(m, layers, Method.full, ())
    assert added_called == lora["called"] - full["called"]


def test_dense_first_layers_hold_no_experts() -> None:
    # DeepSeek-V3's catalog shape: 3 dense layers of 61, then 58 with experts; all-linear adapts the 5 attention
    # linears everywhere and the two fused expert tensors and the router (ParamWrapper) in the MoE layers only
    from planner.models import from_name

    m = from_name("deepseek-v3")
    linears, params = adapted_per_layer(m, ("all",))
    assert linears == pytest.approx(5.0)
    assert params == pytest.approx(3 * 58 / 61)
    assert col.trainable_tensors(m, 61, Method.lora, ("all",)) == 2 * (5 * 61 + 3 * 58)


# Mixtral is a hand-written family (planner/models.py): its fused experts one module, its act_fn a container
FULL = [DEEPSEEK_V3, GPT_OSS, LLAMA4_INTERLEAVED, QWEN3_MOE_DENSE_FIRST, MIXTRAL, QWEN3, PHI3, OLMO2]


@pytest.mark.parametrize("raw", FULL, ids=[raw["model_type"] for raw in FULL])
def test_full_fine_tune_counts_are_the_models_own(raw: dict) -> None:
    m = _spec(raw)
    real = _counts(raw, None)
    assert col.zero3_modules(m, m.num_layers, Method.full, ()) == real["called"]
    assert col.param_modules(m, m.num_layers, Method.full, ()) == real["owners"]
    assert col.trainable_tensors(m, m.num_layers, Method.full, ()) == real["trainable"]


def test_spec_without_measured_calls_keeps_the_rule() -> None:
    # a spec derived before the calls were measured (called_modules 0): the layer's owners and LAYER_CONTAINERS
    import dataclasses

    m = _spec(DEEPSEEK_V3)
    old = dataclasses.replace(m, layer_kinds=tuple(dataclasses.replace(k, called_modules=0) for k in m.layer_kinds))
    owners = col.layer_structure(old)[0]
    assert col.zero3_modules(old, old.num_layers, Method.full, ()) == \
        round(old.num_layers * (owners + col.LAYER_CONTAINERS)) + col.ROOT_MODULES


def test_measured_fields_travel_in_plan_json() -> None:
    # plan.json and the spec cache read layer kinds through check_layer_kinds: gpt-oss's sinks and calls come back
    from planner.input_checks import check_layer_kinds
    from planner.model_layers import layer_kind_to_dict

    m = _spec(GPT_OSS)
    assert all(k.called_modules and [p.path for p in k.other_params] == ["self_attn.sinks"] for k in m.layer_kinds)
    assert check_layer_kinds([layer_kind_to_dict(k) for k in m.layer_kinds], where="") == m.layer_kinds
