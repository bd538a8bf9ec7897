"""Which linears peft's LoRA fails on, as the spec derivation finds them (profiler/spec_derive.py `_blame`): a linear
peft adapts as a parameter (a fused expert tensor, a router that is not nn.Linear) is tried as peft adapts it,
through `target_parameters` (profiler/spec_activations.py `parameter_targets`), never as a module regex, which
cannot match a parameter; a group that fails only with dropout or with half of a fused pair blames no linear.

Before, DeepSeek-V3's experts.gate_up_proj carried "NoMatchingPeftModuleError: Target modules {'gate_up_proj'}
not found", and ftplan refused every LoRA plan of DeepSeek-V3 that peft runs. Llama 4's router is a real failure
(it returns a tuple, which peft's LoRA Linear cannot add to); the shared expert's gate_proj and up_proj, which read
the router's input, are measured without it.
"""

from __future__ import annotations

import pytest
from derived_specs import derive_two_at_a_time, derived
from tiny_moe import DEEPSEEK_V3, LLAMA4, QWEN3_MOE

pytestmark = pytest.mark.filterwarnings("ignore")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def specs() -> None:
    """The three configs' specs, tables included, derived two at a time before the first test reads one."""
    derive_two_at_a_time([DEEPSEEK_V3, LLAMA4, QWEN3_MOE])


def _derived(raw: dict, name: str) -> tuple[list[dict], list[dict]]:
    """(the layer kinds, their linears) of the spec derived from `raw`, saved-tensor tables included."""
    kinds = derived(raw, name=name)["spec"]["layer_kinds"]
    return kinds, [lin for kind in kinds for lin in kind["linears"]]


@pytest.mark.parametrize("raw", [DEEPSEEK_V3, QWEN3_MOE], ids=["deepseek-v3", "qwen3-moe"])
def test_no_lora_error_on_the_parameters_peft_adapts(specs: None, raw: dict) -> None:
    _, linears = _derived(raw, raw["model_type"])
    wrapped = {lin["path"] for lin in linears if lin.get("lora_param")}
    assert {"mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate"} <= wrapped
    assert [(lin["path"], lin["lora_error"]) for lin in linears if lin.get("lora_error")] == []


def test_parameter_targets_name_each_layers_tensor_as_peft_matches_them() -> None:
    from peft.tuners.lora.layer import ParamWrapper

    from profiler import spec_activations as sa
    from profiler.spec_derive import reduce_to
    from profiler.spec_structure import build_meta_model, load_config

    loaded = load_config(dict(DEEPSEEK_V3), name="t")
    model = reduce_to(build_meta_model(loaded, name="t"), loaded.config, [0, 1])
    # layer 0 is dense: only the MoE layer holds them
    assert set(sa.parameter_targets(model, ("mlp.experts.gate_up_proj", "mlp.gate.weight"), "model.layers")) == {
        "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.experts.gate_up_proj"}
    mode = sa.Mode("experts", params=("mlp.experts.gate_up_proj",))
    prepared = sa.prepare(model, "fp32", mode, "model.layers")
    assert any(isinstance(m, ParamWrapper) for m in prepared.modules())
    inner = prepared.get_base_model()
    run = sa.run_once(prepared, inner.model.layers, "fp32", mode, sa.ONE_SHAPE[0], DEEPSEEK_V3["hidden_size"])
    assert run.layers[1].repl + run.layers[1].par > 0


def test_llama4_router_fails_and_its_neighbours_are_measured_without_it(specs: None) -> None:
    kinds, linears = _derived(LLAMA4, "llama4")
    assert {lin["path"] for lin in linears if lin.get("lora_error")} == {"feed_forward.router"}
    assert all("tuple" in lin["lora_error"] for lin in linears if lin.get("lora_error"))
    shared = {lin["group"] for lin in linears if lin["path"] in ("feed_forward.shared_expert.gate_proj",
                                                                 "feed_forward.shared_expert.up_proj")}
    assert shared == {"feed_forward.shared_expert.gate_proj,feed_forward.shared_expert.up_proj"}
    (group,) = shared
    for kind in (k for k in kinds if any(lin.get("group") == group for lin in k["linears"])):
        for regime, table in kind["saved"].items():
            assert {f"lora:{group}", f"lora:{group}:dropout", f"lora1:{group}"} <= table.keys(), regime
