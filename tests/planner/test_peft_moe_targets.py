"""Named LoRA targets on the MoE models peft 0.21.2 converts (planner/peft_moe.py): the v4 expert names a user writes
(gate_proj, up_proj, down_proj; Mixtral's w1, w3, w2) resolve to the fused expert tensors peft adapts, as
parameters (no dropout), with twice the rank on gate_up_proj; half of a fused pair is refused with peft's reason;
DeepSeek-V3's dense and shared-expert MLP linears of those names carry no adapter. The memory model then counts the
merged expert weights the LoRA parametrization materializes, from the tables the spec derivation measures for the
converted selection (`lora:mlp.experts.gate_up_proj`...). peft's own counts on tiny models:
tests/profiler/test_peft_moe_conversion.py; on the full-size meta models: tests/planner/test_params.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from planner.activations import derived_layer_fixed_bytes
from planner.build import build_config
from planner.errors import PlanError
from planner.memory_knobs import layer_training
from planner.model_catalog import HF_CONFIGS
from planner.models import HAND_FAMILIES, from_name, model_names
from planner.params import (
    lora_dropout_note,
    lora_params,
    resolve_lora_targets,
    targetable_names,
    wrapped_lora_targets,
)
from planner.peft_moe import convert_targets, pattern_of
from planner.strategy import LORA_DROPOUT, FsdpStrategy

REPO = Path(__file__).resolve().parents[2]
QWEN3_V4 = ("q_proj", "gate_proj", "up_proj", "down_proj")
EXPERTS = ("experts.gate_up_proj", "experts.down_proj")


@pytest.mark.parametrize(("model", "targets", "resolved"), [
    ("qwen3-30b-a3b", QWEN3_V4, ("q_proj", *EXPERTS)),
    ("qwen3-235b-a22b", ("gate_proj", "up_proj"), ("experts.gate_up_proj",)),
    ("qwen3-30b-a3b", ("down_proj", "gate"), ("experts.down_proj", "gate")),
    # the dense layers' mlp.gate_proj and the shared experts' gate_proj get nothing: peft moves the names to the
    # routed experts
    ("deepseek-v3", ("gate_proj", "up_proj", "down_proj"), EXPERTS),
    ("deepseek-v3", ("q_a_proj", "down_proj"), ("q_a_proj", "experts.down_proj")),
    ("mixtral-8x7b", ("q_proj", "w1", "w3", "w2"), ("q_proj", *EXPERTS)),
    ("mixtral-8x7b", ("w2",), ("experts.down_proj",)),
    # not converted: names stay module names
    ("qwen3-8b", ("gate_proj", "up_proj", "down_proj"), ("gate_proj", "up_proj", "down_proj")),
    ("llama-4-scout-17b-16e", ("gate_proj", "up_proj"), ("gate_proj", "up_proj")),  # its shared expert's nn.Linear
])
def test_named_targets_resolve_to_what_peft_adapts(model: str, targets: tuple[str, ...],
                                                   resolved: tuple[str, ...]) -> None:
    assert resolve_lora_targets(from_name(model), targets) == resolved


def test_trainable_parameters_count_the_fused_tensors_at_twice_the_rank() -> None:
    # Qwen3-30B-A3B: h 2048, 128 experts of width 768, q 32 x 128 heads, 48 layers; peft's ParamWrapper holds
    # lora_A (r' e x in) and lora_B (out x r' e) per fused tensor, r' = 2r on gate_up_proj (in h, out 2i)
    m, r = from_name("qwen3-30b-a3b"), 16
    h, i, e, q, layers = 2048, 768, 128, 32 * 128, 48
    expected = layers * r * ((h + q) + 2 * e * (h + 2 * i) + e * (i + h))
    assert lora_params(m, r, QWEN3_V4) == expected
    # the same fused tensors as all-linear adapts: the named selection is a subset of it
    assert lora_params(m, r, ("q_proj", "k_proj", "v_proj", "o_proj", "gate", *QWEN3_V4[1:])) == lora_params(
        m, r, ("all",))
    # DeepSeek-V3: 58 MoE layers of 256 experts (h 7168, width 2048); the 3 dense layers and the shared experts
    # add nothing
    ds = from_name("deepseek-v3")
    assert lora_params(ds, 8, ("gate_proj", "up_proj", "down_proj")) == \
        58 * 8 * (2 * 256 * (7168 + 2 * 2048) + 256 * (2048 + 7168))


@pytest.mark.parametrize(("model", "targets", "half", "missing"), [
    ("qwen3-30b-a3b", ("q_proj", "gate_proj", "down_proj"), "gate_proj", "up_proj"),
    ("deepseek-v3", ("up_proj",), "up_proj", "gate_proj"),
    ("mixtral-8x7b", ("w1", "w2"), "w1", "w3"),
])
def test_half_a_fused_pair_is_refused_with_peft_reason(model: str, targets: tuple[str, ...], half: str,
                                                       missing: str) -> None:
    with pytest.raises(PlanError, match=rf"{half} without also targeting {missing}: they are fused into "
                                        r"gate_up_proj"):
        resolve_lora_targets(from_name(model), targets)


def test_the_refusal_lists_the_names_a_user_can_write() -> None:
    assert targetable_names(from_name("qwen3-30b-a3b")) == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate", "gate_proj", "up_proj", "down_proj")
    assert targetable_names(from_name("mixtral-8x7b"))[-3:] == ("w1", "w3", "w2")
    with pytest.raises(PlanError, match=r"LoRA target gate_proj, up_proj is not a linear module of mixtral-8x7b "
                                        r"\(its linears: q_proj, k_proj, v_proj, o_proj, gate, w1, w3, w2, or 'all'\)"):
        resolve_lora_targets(from_name("mixtral-8x7b"), ("gate_proj", "up_proj"))
    # the fused tensors are parameters, not modules peft matches by name
    with pytest.raises(PlanError, match="is not a linear module"):
        resolve_lora_targets(from_name("qwen3-30b-a3b"), ("experts.gate_up_proj",))


def test_qwen2_moe_itself_is_not_converted() -> None:
    # peft's pattern table maps qwen3_moe, deepseek_v3, olmoe... to "qwen2_moe" but has no "qwen2_moe" key
    assert pattern_of("qwen2_moe") is None and pattern_of("qwen3_moe") == "qwen2_moe"
    assert convert_targets("qwen2_moe", ("gate_proj", "up_proj")) == (("gate_proj", "up_proj"), ())


def test_named_expert_targets_plan_without_dropout_and_say_so() -> None:
    cfg = build_config(model="qwen3-30b-a3b", gpus="8xH100", fsdp=FsdpStrategy.full_shard, seq_len=1024,
                       lora_targets=",".join(QWEN3_V4))
    assert cfg.lora_dropout == 0.0
    assert wrapped_lora_targets(cfg.model, cfg.lora_targets) == list(EXPERTS)
    note = lora_dropout_note(cfg.model, cfg.lora_targets, cfg.lora_dropout)
    assert note is not None and "experts.gate_up_proj, experts.down_proj" in note
    # the user's names are what the plan keeps (the emitted files pass them to peft, which converts them again)
    assert cfg.lora_targets == QWEN3_V4
    with pytest.raises(PlanError, match="refuse lora_dropout > 0"):
        build_config(model="qwen3-30b-a3b", gpus="8xH100", fsdp=FsdpStrategy.full_shard, seq_len=1024,
                     lora_targets=",".join(QWEN3_V4), lora_dropout=0.05)
    attention = build_config(model="deepseek-v3", gpus="8xH100", fsdp=FsdpStrategy.full_shard, seq_len=1024,
                             lora_targets="q_a_proj,kv_b_proj")
    assert attention.lora_dropout == LORA_DROPOUT


CONVERTED = [n for n in model_names() if str(HF_CONFIGS[n]["model_type"]) not in HAND_FAMILIES
             and pattern_of(str(HF_CONFIGS[n]["model_type"]))]


@pytest.mark.parametrize("name", CONVERTED)
def test_the_converted_selection_has_its_tables(name: str) -> None:
    """Each tensor peft's conversion adapts has a table of its own in every regime, measured through the names a
    user writes (profiler/spec_derive.py `_converted_modes`), and no table carries a converted name's group (it
    would measure the routed experts under another label)."""
    m = from_name(name)
    assert CONVERTED and "deepseek-v3" in CONVERTED
    for kind in m.layer_kinds:
        for regime, modes in kind.saved:
            keys = {mode for mode, _ in modes}
            for lin in kind.linears:
                if lin.name in (*EXPERTS, "gate"):
                    assert lin.group == lin.path and f"lora:{lin.path}" in keys, (name, regime, lin.path)
            assert not any(key.startswith("lora") and ("mlp.gate_proj" in key or "shared_experts" in key)
                           for key in keys), (name, regime, sorted(keys))


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "deepseek-v3"])
def test_named_experts_keep_their_merged_weights(name: str) -> None:
    """peft's LoRA on a fused tensor multiplies through W + B A (peft/tuners/lora/layer.py _LoraFactorsProxy), a
    full copy of the layer's experts that the grouped matmul saves: e in out bytes per MoE layer, as all-linear's,
    whether the experts are named or reached through `all`."""
    m = from_name(name)
    moe = [k for k in m.layer_kinds if k.mlp.kind == "moe"]
    expected = sum(k.count * 2 * k.mlp.experts * (m.hidden_size * 2 * k.mlp.intermediate
                                                  + k.mlp.intermediate * m.hidden_size) for k in moe) / m.num_layers

    def fixed(targets: str) -> float:
        cfg = build_config(model=name, gpus="8xH100", fsdp=FsdpStrategy.full_shard, seq_len=1024,
                           lora_targets=targets, lora_dropout=0.0)
        return derived_layer_fixed_bytes(m, act_bytes=2, attn=cfg.attn, train=layer_training(cfg))

    experts, none = fixed("gate_proj,up_proj,down_proj"), fixed(targetable_names(m)[0])
    assert experts - none == pytest.approx(expected, rel=1e-12)


def test_cli_plans_the_v4_names_and_refuses_half_a_pair(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "ftplan", "estimate", "--model", "qwen3-30b-a3b", "--gpus", "8xH100", "--method",
            "lora", "--zero", "3", "--grad-ckpt", "full"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    ok = subprocess.run([*base, "--lora-targets", ",".join(QWEN3_V4), "--emit", str(tmp_path / "plan")],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "trainable 493.09M" in ok.stdout and "LoRA dropout 0: peft adapts experts.gate_up_proj" in ok.stdout
    # the emitted files pass the user's names on: peft converts them at run time as the plan did
    lf = (tmp_path / "plan" / "llamafactory.yaml").read_text()
    assert "lora_target: q_proj,gate_proj,up_proj,down_proj" in lf and "lora_dropout: 0.0" in lf
    half = subprocess.run([*base, "--lora-targets", "q_proj,gate_proj,down_proj"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert half.returncode == 2 and "Traceback" not in half.stderr
    assert half.stderr.strip().splitlines() == [
        "ftplan: error: peft cannot convert LoRA target(s) gate_proj without also targeting up_proj: they are fused "
        "into gate_up_proj (transformers 5), which peft 0.21.2 adapts as one; name both"]
