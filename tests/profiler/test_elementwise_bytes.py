"""The time model's elementwise bytes per token (planner/kernels.py layer_elementwise_bytes) against what a real
transformers LlamaDecoderLayer reads and writes outside its matmuls and attention kernel: every other aten op's
input and output bytes, counted by a dispatch mode over one forward and one backward."""

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
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ not in _NOT_ELEMENTWISE:
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
