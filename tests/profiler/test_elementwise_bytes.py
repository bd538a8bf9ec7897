"""The time model's elementwise bytes per token (planner/kernels.py layer_elementwise_bytes) against what a real
transformers LlamaDecoderLayer reads and writes outside its matmuls and attention kernel: every other aten op's
input and output bytes, counted by a dispatch mode over one forward and one backward; and the same for a layer of
each family read from transformers (Qwen3, OLMo 2, Phi-3, Gemma 3, Qwen3-MoE, gpt-oss, DeepSeek-V3, Llama 4), whose
norms, attention and experts the planner counts from the spec (kind_elementwise_bytes). Matmuls, grouped expert
GEMMs, attention kernels, views and allocations move no elementwise bytes."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from planner import kernels as kn
from planner.models import ModelSpec

# matmuls and attention kernels are timed as GEMMs / flash attention; views move no bytes
_NOT_ELEMENTWISE = {"mm", "addmm", "bmm", "linear", "matmul", "_scaled_dot_product_flash_attention_for_cpu",
                    "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_efficient_attention",
                    "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_flash_attention",
                    "_scaled_dot_product_flash_attention_backward", "view", "_unsafe_view", "t", "transpose",
                    "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided", "permute", "reshape", "alias",
                    "detach", "split", "unbind", "split_with_sizes", "narrow"}


class _Bytes(TorchDispatchMode):
    def __init__(self, skip: frozenset[str] | set[str] = frozenset()) -> None:
        super().__init__()
        self.total = 0
        self.skip = _NOT_ELEMENTWISE | set(skip)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in self.skip and "grouped_mm" not in name:
            self.total += _nbytes(list(args)) + _nbytes(list((kwargs or {}).values())) + _nbytes(out)
        return out


def _nbytes(x: object) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(y) for y in x)
    return 0


def _measure(h: int, i: int, dtype: torch.dtype, s: int = 128) -> tuple[float, float]:
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_attention_heads=4, num_key_value_heads=4,
                      num_hidden_layers=1, vocab_size=100, attn_implementation="sdpa")
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(cfg, 0).to(dtype)
    x = torch.randn(1, s, h, dtype=dtype, requires_grad=True)
    pos = torch.arange(s).unsqueeze(0)
    pe = LlamaRotaryEmbedding(cfg)(x, pos)
    with _Bytes() as fwd:
        y = layer(x, position_embeddings=pe, attention_mask=None, position_ids=pos)
        y = y[0] if isinstance(y, tuple) else y
    with _Bytes() as bwd:
        y.backward(torch.ones_like(y))
    return fwd.total / s, bwd.total / s


# bytes per token scale with h and i alike, so one small shape per dtype suffices (the transformers import is most
# of this module's time; in a suite run it is shared with the runner's tests)
@pytest.mark.parametrize(("dtype", "e", "h", "i"), [(torch.float32, 4.0, 256, 512), (torch.bfloat16, 2.0, 512, 1024)])
def test_layer_elementwise_bytes_match_transformers(dtype: torch.dtype, e: float, h: int, i: int) -> None:
    spec = ModelSpec(name="t", model_type="llama", vocab_size=100, hidden_size=h, intermediate_size=i, num_layers=1,
                     num_heads=4, num_kv_heads=4, head_dim=h // 4, tie_embeddings=False)
    fwd, bwd = _measure(h, i, dtype, s=64)
    planned = kn.layer_elementwise_bytes(spec, e, fused=False)
    assert planned == pytest.approx(fwd, rel=0.05)
    assert kn.ELEMENTWISE_BACKWARD_OVER_FORWARD * planned == pytest.approx(bwd, rel=0.05)


# --- families read from transformers (planner/kernels.py kind_elementwise_bytes) ---------------------------------
# One layer kind per config (every layer the same kind); a layer's bytes are the difference between the model with
# two layers and with one, forward and backward, so the embedding, rotary tables, head and loss cancel.
_SMALL = {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 512}
_MLA = {**{k: v for k, v in _SMALL.items() if k != "head_dim"}, "model_type": "deepseek_v3", "num_key_value_heads": 4,
        "moe_intermediate_size": 128, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
        "q_lora_rank": 64, "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
        "n_group": 2, "topk_group": 1}
_LLAMA4 = {**_SMALL, "model_type": "llama4_text", "intermediate_size_mlp": 512, "num_local_experts": 4,
           "num_experts_per_tok": 1, "interleave_moe_layer_step": 1}
FAMILIES = {
    "qwen3": {**_SMALL, "model_type": "qwen3"},  # q/k norms
    "olmo2": {**_SMALL, "model_type": "olmo2"},  # post-norms, whole-projection q/k norms, fp32 rotary
    "phi3": {**_SMALL, "model_type": "phi3", "pad_token_id": 0},  # fused qkv and gate_up, rotary concatenation
    "gemma3-sliding": {**_SMALL, "model_type": "gemma3_text", "sliding_window": 32,
                       "layer_types": ["sliding_attention"] * 2},  # sandwich norms, (x * w) in fp32
    "qwen3-moe": {**_SMALL, "model_type": "qwen3_moe", "moe_intermediate_size": 128, "num_experts": 8,
                  "num_experts_per_tok": 2},  # grouped_mm dispatch
    "gpt-oss": {**_SMALL, "model_type": "gpt_oss", "num_local_experts": 8, "num_experts_per_tok": 2,
                "sliding_window": 32, "layer_types": ["full_attention"] * 2},  # clamped gate, expert biases
    "deepseek-v3-dense": {**_MLA, "first_k_dense_replace": 8},  # latent attention
    "deepseek-v3-moe": {**_MLA, "first_k_dense_replace": 0},  # shared expert, fp32 routing weights
    "llama4-chunked": _LLAMA4,  # every token through every expert, complex rotary, weightless q/k norm
    "llama4-nope": {**_LLAMA4, "no_rope_layers": [0, 0], "layer_types": ["full_attention"] * 2},
}
# gpt-oss has no SDPA path and SDPA runs latent attention's unequal head sizes through its math fallback (fp32
# copies of q, k and v that a GPU kernel does not make), so those run eager attention; bytes per token = A + C s
# at two lengths leaves A, the layer's own elementwise ops, without the s x s scores
_EAGER = ("gpt-oss", "deepseek-v3-dense", "deepseek-v3-moe")
_ALLOCATIONS = {"new_empty", "empty_like", "empty", "zeros_like", "ones", "arange", "scalar_tensor", "lift_fresh",
                "view_as_real", "view_as_complex"}


def _model_bytes(raw: dict, layers: int, s: int, attn: str) -> tuple[float, float]:
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = {**raw, "num_hidden_layers": layers}
    if "layer_types" in raw:
        raw["layer_types"] = raw["layer_types"][:layers]
    if "no_rope_layers" in raw:
        raw["no_rope_layers"] = raw["no_rope_layers"][:layers]
    cfg = AutoConfig.for_model(**raw).get_text_config(decoder=True)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).train()
    ids = torch.randint(0, cfg.vocab_size, (1, s))
    with _Bytes(_ALLOCATIONS) as fwd:
        loss = model(input_ids=ids, labels=ids).loss
    with _Bytes(_ALLOCATIONS) as bwd:
        loss.backward()
    return fwd.total / s, bwd.total / s


def _layer_bytes(raw: dict, s: int, attn: str) -> tuple[float, float]:
    (f1, b1), (f2, b2) = _model_bytes(raw, 1, s, attn), _model_bytes(raw, 2, s, attn)
    return f2 - f1, b2 - b1


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_elementwise_bytes_match_transformers(family: str) -> None:
    """Each family's layer as transformers runs it in bf16: the forward bytes within 5% of the count, the backward
    within 15% of ELEMENTWISE_BACKWARD_OVER_FORWARD times it (measured 2.0x to 2.5x across the families)."""
    from planner.models import spec_from_dict
    from profiler.spec_derive import derive

    raw = FAMILIES[family]
    one = {**raw, "num_hidden_layers": 1, **({"layer_types": raw["layer_types"][:1]} if "layer_types" in raw else {}),
           **({"no_rope_layers": raw["no_rope_layers"][:1]} if "no_rope_layers" in raw else {})}
    spec = spec_from_dict(derive(one, name=family, activations=False)["spec"], name=family, source="test")
    planned = kn.layer_elementwise_bytes(spec, 2.0, fused=False)
    if family in _EAGER:
        (f1, b1), (f2, b2) = _layer_bytes(raw, 64, "eager"), _layer_bytes(raw, 128, "eager")
        fwd, bwd = 2 * f1 - f2, 2 * b1 - b2
    else:
        fwd, bwd = _layer_bytes(raw, 64, "sdpa")
    assert planned == pytest.approx(fwd, rel=0.05)
    assert kn.ELEMENTWISE_BACKWARD_OVER_FORWARD * planned == pytest.approx(bwd, rel=0.15)
