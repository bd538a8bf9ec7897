"""config.json files of current architectures, read from the transformers model itself (profiler/spec_derive.py):
the parameter count of every structure equals transformers' model built on the meta device, to the parameter, and
its records say what the architecture is (q/k norms, sandwich norms, sliding-window and global layers, sinks,
multi-head latent attention, shared experts, dense-first layers, experts run for every token).

Small configs of each family (the count is exact whatever the sizes; the catalog's full-size models are
tests/planner/test_catalog_specs.py). The structure is read in-process without the saved-tensor tables (those are
tests/planner/test_model_derive.py's); one config goes the user's way, through the planner's subprocess.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import PlanError
from planner.models import spec_from_dict
from planner.params import active_params, lora_params, total_params

pytestmark = pytest.mark.filterwarnings("ignore")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
_SMALL = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256}

# model_type -> (config.json, what the structure must show)
FAMILIES: dict[str, dict] = {
    "qwen3": {**_SMALL, "model_type": "qwen3"},
    "qwen3_moe": {**_SMALL, "model_type": "qwen3_moe", "moe_intermediate_size": 32, "num_experts": 8,
                  "num_experts_per_tok": 2, "mlp_only_layers": [0]},
    "gemma3_text": {**_SMALL, "model_type": "gemma3_text", "sliding_window": 32},
    # a multimodal config: its text_config is the model planned
    "gemma3": {"model_type": "gemma3", "text_config": {**_SMALL, "model_type": "gemma3_text", "sliding_window": 32},
               "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "image_size": 28, "patch_size": 14}},
    "gpt_oss": {**_SMALL, "model_type": "gpt_oss", "num_local_experts": 8, "num_experts_per_tok": 2,
                "sliding_window": 32},
    # one key/value head per head, as DeepSeek-V3 has (128 of 128): the derivation runs a forward (the modules it
    # calls), and transformers repeats MLA's per-head keys heads / key_value_heads times under SDPA (a size mismatch)
    "deepseek_v3": {**{k: v for k, v in _SMALL.items() if k != "head_dim"}, "model_type": "deepseek_v3",
                    "num_key_value_heads": _SMALL["num_attention_heads"],
                    "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
                    "n_shared_experts": 1, "first_k_dense_replace": 2, "q_lora_rank": 32, "kv_lora_rank": 16,
                    "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "n_group": 2, "topk_group": 1},
    "llama4_text": {**_SMALL, "model_type": "llama4_text", "intermediate_size_mlp": 128, "num_local_experts": 4,
                    "num_experts_per_tok": 1, "interleave_moe_layer_step": 2},
    "phi3": {**_SMALL, "model_type": "phi3", "pad_token_id": 0},
    "olmo2": {**_SMALL, "model_type": "olmo2"},
    "granitemoe": {**_SMALL, "model_type": "granitemoe", "num_local_experts": 4, "num_experts_per_tok": 2},
}


@functools.cache
def _derived_family(family: str) -> tuple[dict, object]:
    from profiler.spec_derive import derive

    data = derive(FAMILIES[family], name=family, activations=False)["spec"]
    return data, spec_from_dict(data, name=family, source="test")


def _derived(raw: dict, name: str) -> tuple[dict, object]:
    family = next(f for f, r in FAMILIES.items() if r is raw)
    return _derived_family(family)


def _meta_count(raw: dict) -> int:
    from profiler.spec_structure import build_meta_model, load_config

    model = build_meta_model(load_config(raw, name="meta"), name="meta")
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_params_total_equals_the_meta_model(family: str) -> None:
    raw = FAMILIES[family]
    data, m = _derived(raw, family)
    assert total_params(m) == data["params_total"] == _meta_count(raw)


def test_the_structures_say_what_each_architecture_is() -> None:
    qwen3 = _derived(FAMILIES["qwen3"], "q")[1]
    assert qwen3.layer_kinds[0].attention.qk_norm and not qwen3.is_moe

    gemma = _derived(FAMILIES["gemma3_text"], "g")[1]
    windows = {k.attention.window: k.count for k in gemma.layer_kinds}
    assert windows == {32: 5, 0: 1}  # five sliding-window layers per global one
    assert {n.path for n in gemma.layer_kinds[0].norms} >= {"pre_feedforward_layernorm", "post_feedforward_layernorm"}
    assert _derived(FAMILIES["gemma3"], "gm")[1].text_config

    oss = _derived(FAMILIES["gpt_oss"], "o")[1]
    assert all(k.attention.sinks for k in oss.layer_kinds) and "sdpa" not in oss.attn_kernels
    assert {k.attention.window for k in oss.layer_kinds} == {32, 0}

    ds = _derived(FAMILIES["deepseek_v3"], "d")[1]
    kinds = {k.mlp.kind: k for k in ds.layer_kinds}
    assert kinds["dense"].count == 2 and kinds["moe"].count == 4  # first_k_dense_replace
    assert kinds["moe"].attention.kind == "mla" and kinds["moe"].mlp.shared_intermediate == 32
    assert kinds["moe"].attention.qk_head_dim == 24 and kinds["moe"].attention.v_head_dim == 16

    moe = _derived(FAMILIES["qwen3_moe"], "m")[1]
    assert {k.mlp.kind for k in moe.layer_kinds} == {"dense", "moe"}  # mlp_only_layers
    # peft's all-linear adapts the fused experts and the router as parameters, with gate_up's rank doubled
    experts = {lin.name: lin for lin in moe.linears() if lin.role in ("expert", "router")}
    assert all(lin.all_linear and lin.lora_param for lin in experts.values())
    assert experts["experts.gate_up_proj"].lora_per_rank == 2 * 8 * (64 + 64)

    scout = _derived(FAMILIES["llama4_text"], "l4")[1]
    moe_kind = next(k for k in scout.layer_kinds if k.mlp.kind == "moe")
    # transformers runs every expert on every token (torch.bmm over all of them), weighted by the router's scores
    assert moe_kind.mlp.dispatch == "all_experts"
    assert {lin.active_copies for lin in moe_kind.linears if lin.role == "expert"} == {4.0}


def test_active_parameters_count_the_experts_a_token_meets() -> None:
    m = _derived(FAMILIES["qwen3_moe"], "m")[1]
    expert = 64 * 64 + 32 * 64  # gate_up + down of one expert
    assert total_params(m) - active_params(m) == 5 * expert * (8 - 2)  # the five MoE layers


def test_lora_parameters_equal_peft() -> None:
    peft = pytest.importorskip("peft")
    for family in ("qwen3_moe", "deepseek_v3", "gemma3_text", "phi3"):
        raw = FAMILIES[family]
        m = _derived(raw, family)[1]
        from profiler.spec_structure import build_meta_model, load_config

        model = build_meta_model(load_config(raw, name=family), name=family)
        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
        assert lora_params(m, 4, ("all",)) == wrapped.get_nb_trainable_parameters()[0], family


def test_a_users_config_goes_through_the_subprocess_and_the_cache(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from planner.models import resolve

    monkeypatch.setenv("FTPLAN_SPEC_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "olmo"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(FAMILIES["olmo2"]))
    m = resolve(str(model))
    assert m.derived and total_params(m) == _meta_count(FAMILIES["olmo2"])
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    assert resolve(str(model)) == m  # read back from the cache


def test_a_spec_cached_by_an_earlier_derivation_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache key carries the derivation's revision: a spec that an earlier profiler/spec_derive.py wrote (with
    revision 1's false blame of DeepSeek-V3's fused experts) is derived again, not read back."""
    from planner import spec_cache

    now = spec_cache.cache_path(FAMILIES["olmo2"])
    monkeypatch.setattr(spec_cache, "DERIVE_REVISION", spec_cache.DERIVE_REVISION - 1)
    assert spec_cache.cache_path(FAMILIES["olmo2"]) != now


@pytest.mark.parametrize(("raw", "needle"), [
    ({"model_type": "no_such_family", "hidden_size": 8},
     "'no_such_family' is not supported: transformers cannot build"),
    ({"model_type": "t5", "d_model": 32, "num_layers": 1, "num_heads": 2, "d_kv": 16, "d_ff": 64, "vocab_size": 64},
     "not supported: transformers has no causal-LM class"),
], ids=["unknown", "encoder-decoder"])
def test_an_architecture_that_cannot_be_planned_gets_one_line(tmp_path: Path, raw: dict, needle: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(raw))
    env_cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "ftplan", "estimate", "--model", str(tmp_path),
                           "--gpus", "1xA100-80G"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FTPLAN_SPEC_CACHE": str(env_cache)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_spec_dict_that_does_not_load_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="does not load"):
        spec_from_dict({"vocab_size": "x"}, name="bad", source="test")
