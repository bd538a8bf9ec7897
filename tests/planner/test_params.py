"""Registry-wide parameter counts: planner.params against what transformers and peft build.

Every catalog model is built on the meta device (no memory, no download) from the same config.json
excerpt the planner parses, and its `parameters()` are counted; the planner must agree to the
parameter. Families without native transformers support are checked through a proxy with the
same parameter layout (stated per case). LoRA trainable counts are checked against peft's
`get_nb_trainable_parameters()` on the same meta models.
"""

from __future__ import annotations

import pytest

from planner.model_catalog import HF_CONFIGS
from planner.models import from_name, model_names
from planner.params import (
    active_params,
    largest_layer_params,
    lora_params,
    resolve_lora_targets,
    total_params,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecation notices
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_DROP = ("model_type", "model_max_length", "padded_vocab_size", "ffn_hidden_size", "num_layers",
         "multi_query_attention", "multi_query_group_num", "kv_channels", "add_qkv_bias", "add_bias_linear",
         "seq_length", "rmsnorm")


def hf_config(name: str):
    """The transformers config for a catalog entry: native class, or a proxy with the same layout."""
    raw = dict(HF_CONFIGS[name])
    model_type = raw["model_type"]
    kw = {k: v for k, v in raw.items() if k not in _DROP}
    if model_type not in ("baichuan", "chatglm"):  # transformers' own classes (for a multimodal excerpt, its text)
        from profiler.spec_structure import load_config

        return load_config(raw, name=name).config
    if model_type == "baichuan":
        # Proxy: Baichuan2's W_pack (h -> 3h, no bias) holds exactly the q, k, v weights of a LlamaConfig
        # with the same dims (MHA, no bias); everything else (RMSNorm, SwiGLU, untied head) is Llama's.
        # Baichuan2-13B's ALiBi adds no parameters.
        return transformers.LlamaConfig(**kw)
    if model_type == "chatglm":
        # Proxy: transformers' GlmForCausalLM (THUDM GLM-4 port) has ChatGLM3's layout: q/k/v with bias
        # (ChatGLM3's query_key_value with add_qkv_bias), dense without bias, gate_up_proj fused (ChatGLM3's
        # dense_h_to_4h of width 2*ffn), RMSNorm, untied output layer. The tiny-vocab catalog config
        # needs pad_token_id inside the vocabulary.
        return transformers.GlmConfig(
            vocab_size=raw["padded_vocab_size"], hidden_size=raw["hidden_size"],
            intermediate_size=raw["ffn_hidden_size"], num_hidden_layers=raw["num_layers"],
            num_attention_heads=raw["num_attention_heads"], num_key_value_heads=raw["multi_query_group_num"],
            head_dim=raw["kv_channels"], attention_bias=raw["add_qkv_bias"], tie_word_embeddings=False,
            pad_token_id=0)
    raise AssertionError(f"no transformers config for model_type {model_type}")


def meta_model(cfg):
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cfg)


def built_params(name: str) -> int:
    return sum(p.numel() for p in meta_model(hf_config(name)).parameters())


@pytest.mark.parametrize("name", model_names())
def test_total_params_equal_transformers(name: str) -> None:
    assert total_params(from_name(name)) == built_params(name)


def test_proxies_have_the_layout_they_stand_for() -> None:
    """The GLM proxy really fuses gate/up and biases q/k/v only, as ChatGLM3 does."""
    model = meta_model(hf_config("chatglm3-6b"))
    names = {n for n, _ in model.named_parameters()}
    layer = "model.layers.0."
    assert f"{layer}self_attn.q_proj.bias" in names and f"{layer}self_attn.o_proj.bias" not in names
    assert f"{layer}mlp.gate_up_proj.weight" in names and f"{layer}mlp.down_proj.bias" not in names


# Published totals (Hugging Face model API `safetensors.total`, and GGUF general.parameter_count).
# The Llama-2 *-hf checkpoints also store each layer's rotary `inv_freq` buffer (head_dim / 2
# floats), which is not a parameter: 64 per layer.
PUBLISHED = {
    "llama-2-7b": 6_738_417_664 - 32 * 64,  # huggingface.co/api/models/meta-llama/Llama-2-7b-hf
    "llama-2-13b": 13_015_866_880 - 40 * 64,  # .../meta-llama/Llama-2-13b-hf
    "llama-2-70b": 68_976_653_312 - 80 * 64,  # .../meta-llama/Llama-2-70b-hf
    "llama-3.1-8b": 8_030_261_248,  # .../meta-llama/Llama-3.1-8B
    "llama-3.1-70b": 70_553_706_496,  # .../meta-llama/Llama-3.1-70B
    "llama-3.1-405b": 405_853_388_800,  # .../meta-llama/Llama-3.1-405B
    "llama-3.2-1b": 1_235_814_400,  # .../meta-llama/Llama-3.2-1B-Instruct
    "llama-3.2-3b": 3_212_749_824,  # .../meta-llama/Llama-3.2-3B-Instruct
    "mistral-7b": 7_241_732_096,  # Mistral-7B GGUF general.parameter_count
    "mixtral-8x7b": 46_702_792_704,  # .../mistralai/Mixtral-8x7B-Instruct-v0.1 safetensors.total
    "qwen2.5-7b": 7_615_616_512,  # Qwen2.5-7B GGUF general.parameter_count
    "qwen2.5-14b": 14_770_033_664,  # Qwen2.5-14B GGUF general.parameter_count
    "qwen2.5-72b": 72_706_203_648,  # .../Qwen/Qwen2.5-72B-Instruct
    "chatglm3-6b": 6_243_584_000,  # trainable parameters printed by THUDM's modeling_chatglm model
    "bloom-7b1": 7_069_016_064,  # bigscience/bloom-7b1 model card
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_total_params_equal_published(name: str) -> None:
    assert total_params(from_name(name)) == PUBLISHED[name]


def test_mixtral_active_params() -> None:
    """Mixtral-8x7B: 46.7B stored, 12.9B active with 2 of 8 experts (Jiang et al. 2024, Sec. 2)."""
    m = from_name("mixtral-8x7b")
    assert total_params(m) == 46_702_792_704
    assert 12.8e9 < active_params(m) < 13.0e9


def test_largest_layer_is_the_embedding_for_llama2_7b() -> None:
    # DeepSpeed's ZeRO-3 estimator takes the largest module's parameter count: 32000 x 4096.
    assert largest_layer_params(from_name("llama-2-7b")) == 131_072_000


# --- LoRA against peft ---------------------------------------------------------------------------

LORA_CASES = [
    ("llama-2-7b", 8, ("q_proj", "v_proj")),
    ("llama-2-7b", 64, ("all",)),
    ("llama-3-8b", 16, ("all",)),
    ("llama-3.2-1b", 32, ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("mistral-7b", 8, ("gate_proj", "up_proj", "down_proj")),
    ("qwen2.5-7b", 16, ("all",)),
    ("bloom-7b1", 8, ("query_key_value",)),
    ("bloom-7b1", 4, ("all",)),
    ("mixtral-8x7b", 8, ("all",)),  # attention, and router and fused experts adapted as parameters
    ("mixtral-8x7b", 8, ("q_proj", "gate")),  # the router alone, as a parameter
    # v4 expert names, which peft converts to the fused tensors (planner/peft_moe.py): gate_up_proj at rank 2r
    ("mixtral-8x7b", 8, ("q_proj", "w1", "w3", "w2")),
    ("qwen3-30b-a3b", 16, ("q_proj", "gate_proj", "up_proj", "down_proj")),
    ("qwen3-30b-a3b", 8, ("down_proj", "gate")),
    ("deepseek-v3", 8, ("gate_proj", "up_proj", "down_proj")),  # the routed experts only, not the dense/shared MLPs
]


@pytest.mark.parametrize(("name", "r", "targets"), LORA_CASES,
                         ids=[f"{n}-r{r}-{'+'.join(t)}" for n, r, t in LORA_CASES])
def test_lora_trainable_equal_peft(name: str, r: int, targets: tuple[str, ...]) -> None:
    peft = pytest.importorskip("peft")
    m = from_name(name)
    model = meta_model(hf_config(name))
    # "all" is peft's all-linear, as the runner and the dry run pass it (for Mixtral peft also adapts the fused
    # experts as parameters); named targets go to peft as the user wrote them, as the runner passes them
    resolve_lora_targets(m, targets)
    modules = "all-linear" if targets == ("all",) else list(targets)
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=modules, lora_dropout=0.0, bias="none",
                             task_type="CAUSAL_LM")
    with torch.device("meta"):
        wrapped = peft.get_peft_model(model, config)
    trainable, total = wrapped.get_nb_trainable_parameters()
    assert lora_params(m, r, targets) == trainable
    assert total_params(m) + trainable == total
