"""The measured activation tables and how the planner composes them (planner/activations.py
`derived_layer_bytes_per_token`), against what autograd saves in the real layers (profiler/spec_activations.py
run directly at the planned shape):

- the hand-written Llama rule agrees with the tables transformers' own Llama layer gives (the rule predates them
  and is kept for the Llama-shaped families; what it leaves out is listed in its docstring);
- configurations the tables do not hold directly are composed: a LoRA subset (q_proj, v_proj), a rank other than
  the measured 8, eager attention with LoRA, a longer sequence.
"""

from __future__ import annotations

import functools

import derived_specs
import pytest

from planner.activations import (
    LayerTraining,
    derived_layer_bytes_per_token,
    derived_layer_fixed_bytes,
    hf_layer_bytes_per_token,
)
from planner.choices import Attn
from planner.models import spec_from_dict, spec_from_hf_config

pytestmark = pytest.mark.filterwarnings("ignore")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

LLAMA = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
QWEN3 = {**LLAMA, "model_type": "qwen3", "head_dim": 16}
ALL = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


@pytest.fixture(scope="module")
def specs() -> None:
    """Both configs' specs, tables included, derived two at a time before the first test reads one."""
    derived_specs.derive_two_at_a_time([LLAMA, QWEN3])


@functools.cache
def _derived(family: str):
    raw = {"llama": LLAMA, "qwen3": QWEN3}[family]
    return spec_from_dict(derived_specs.derived(raw, name=family)["spec"], name=family, source="test")


def _measured_per_token(raw: dict, *, regime: str, targets: tuple[str, ...] = (), weights: bool = False,
                        attn: str = "sdpa", r: int = 8, seq: int = 16) -> float:
    """What the first layer saves per token at (1, seq), run directly."""
    from profiler import spec_activations as sa
    from profiler.spec_derive import reduce_to
    from profiler.spec_structure import build_meta_model, load_config

    loaded = load_config(raw, name="t")
    model = reduce_to(build_meta_model(loaded, name="t"), loaded.config, [0])
    mode = sa.Mode("m", weights=weights, targets=targets, attn=attn)
    old = sa.LORA_R
    sa.LORA_R = r
    try:
        prepared = sa.prepare(model, regime, mode, "model.layers")
    finally:
        sa.LORA_R = old
    inner = prepared.get_base_model() if hasattr(prepared, "get_base_model") else prepared
    run = sa.run_once(prepared, inner.model.layers, regime, mode, (1, seq), raw["hidden_size"])
    return (run.layers[0].repl + run.layers[0].par) / seq


def _planned(m, *, e: int, train: LayerTraining, attn: Attn = Attn.sdpa, seq: int = 16) -> float:
    return (derived_layer_bytes_per_token(m, act_bytes=e, attn=attn, train=train, seq_len=seq)
            + derived_layer_fixed_bytes(m, act_bytes=e, attn=attn, train=train) / seq)


@pytest.mark.parametrize(("e", "train"), [
    (2, LayerTraining(weights=True, mixed=False)),  # bf16-true full
    (4, LayerTraining(weights=True)),  # fp32 full
    (4, LayerTraining(weights=False, lora_targets=ALL)),
    (4, LayerTraining(weights=False, lora_targets=ALL, lora_dropout=True)),
    (2, LayerTraining(weights=False, lora_targets=ALL, lora_input_copies=True)),  # bf16-mixed LoRA
], ids=["bf16-full", "fp32-full", "fp32-lora", "fp32-lora-dropout", "mixed-lora"])
def test_the_llama_rule_agrees_with_the_tables_of_transformers_llama(specs: None, e: int,
                                                                    train: LayerTraining) -> None:
    """The rule leaves out each norm's fp32 inverse RMS (4 bytes) and lora_B's r-wide input (e r per adapted
    linear): exactly the difference here."""
    derived = _derived("llama")
    rule = spec_from_hf_config(LLAMA, name="llama")
    seq = 256
    planned_rule = hf_layer_bytes_per_token(rule, act_bytes=e, attn=Attn.sdpa, train=train, seq_len=seq)
    left_out = 2 * 4 + (8 * e * len(train.lora_targets) if train.lora_targets else 0)
    assert _planned(derived, e=e, train=train, seq=seq) == pytest.approx(planned_rule + left_out, rel=0.01)


@pytest.mark.parametrize(("label", "kw", "train", "e", "attn", "seq"), [
    ("q,v subset", {"targets": ("self_attn.q_proj", "self_attn.v_proj")},
     LayerTraining(weights=False, lora_targets=frozenset({"q_proj", "v_proj"}), lora_input_copies=True), 2,
     Attn.sdpa, 16),
    ("rank 32", {"targets": ("all-linear",), "r": 32},
     LayerTraining(weights=False, lora_targets=ALL, lora_input_copies=True, lora_r=32), 2, Attn.sdpa, 16),
    ("eager + LoRA", {"targets": ("all-linear",), "attn": "eager"},
     LayerTraining(weights=False, lora_targets=ALL, lora_input_copies=True), 2, Attn.eager, 48),
    ("longer sequence", {"weights": True}, LayerTraining(weights=True), 2, Attn.sdpa, 96),
], ids=lambda x: x if isinstance(x, str) else None)
def test_composed_configurations_match_a_direct_run(specs: None, label: str, kw: dict, train: LayerTraining, e: int,
                                                    attn: Attn, seq: int) -> None:
    m = _derived("qwen3")
    measured = _measured_per_token(QWEN3, regime="mixed", seq=seq, **kw)
    assert _planned(m, e=e, train=train, attn=attn, seq=seq) == pytest.approx(measured, rel=0.015), label
