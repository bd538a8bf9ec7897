"""The attention kernels' passes over the b x heads x s x s scores (planner/kernels.py SCORE_PASSES), counted from the
aten ops torch 2.13 dispatches for transformers 5.25's eager attention, for SDPA's math kernel and for GPT-2's own
attention of transformers 4.12 (re-implemented op for op below), forward and backward, on the CPU: every op that
reads or writes a tensor of the scores' size adds its bytes, the two batched GEMMs aside (their passes sit in the
GEMMs' roofline) and views, which move nothing. The mask is built b x 1 x s x s (transformers) or s x s (SDPA),
smaller than the scores, and not counted, as in the planner.

What the CPU cannot show: fp16 on CUDA takes softmax's half-to-float kernel (the "fp16-cuda" column, read from
aten/src/ATen/native/SoftMax.cpp); training's attention dropout on CUDA runs the fused native_dropout (the CPU's
nn.Dropout draws a separate noise tensor, so the GPT-2 test calls the CUDA path's op); PyTorch 2.0-2.4's math kernel
in its inputs' dtype is checked here through 2.13's allow_fp16_bf16_reduction_math_sdp, which keeps 2.13's math
kernel in the inputs' dtype as those releases ran it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers.models.llama.modeling_llama import eager_attention_forward

from planner import kernels as kn
from planner.gpus import GPUS
from planner.model_layers import AttentionShape
from planner.models import ModelSpec

B, H, S, D = 1, 4, 64, 16
SCORES = B * H * S * S
_NO_DATA = {"aten.view.default", "aten._unsafe_view.default", "aten.expand.default", "aten.transpose.int",
            "aten.detach.default", "aten.t.default"}
_GEMMS = {"aten.bmm.default", "aten.mm.default"}


class _ScoreBytes(TorchDispatchMode):
    """Bytes per score element that ops other than the GEMMs and views read and write on score-sized tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func) not in _NO_DATA | _GEMMS:
            tensors = [t for t in tree_flatten((args, kwargs))[0] + tree_flatten(out)[0]
                       if isinstance(t, torch.Tensor) and t.numel() == SCORES]
            self.bytes += sum(t.element_size() for t in tensors)
        return out


def _passes(fn, dtype: torch.dtype) -> tuple[int, int]:
    """(forward, backward) bytes per score element of one attention call."""
    q = torch.randn(B, H, S, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, 1, S, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, 1, S, D, dtype=dtype, requires_grad=True)
    with _ScoreBytes() as fwd:
        out = fn(q, k, v)
    with _ScoreBytes() as bwd:
        out.backward(torch.ones_like(out))
    return fwd.bytes, bwd.bytes


class _Module(nn.Module):
    num_key_value_groups = H


def _hf_eager(q, k, v):
    mask = torch.full((S, S), torch.finfo(q.dtype).min, dtype=q.dtype).triu(1)[None, None].expand(B, 1, S, S)
    return eager_attention_forward(_Module(), q, k, v, mask, scaling=D ** -0.5, dropout=0.0)[0]


def _sdpa_math(q, k, v):
    # the one key / value head broadcast by the math kernel's matmul, as Falcon's RW code hands it to PyTorch 2.0
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k.expand(-1, H, -1, -1), v.expand(-1, H, -1, -1), is_causal=True)


def _gpt2_eager_2021(q, k, v):
    """GPT2Attention._attn of transformers 4.12 (the release DeepSpeedExamples' autotuning/hf/gpt2-large README
    names), op for op: the division by sqrt(d), torch.where against the boolean causal `bias` buffer and
    `masked_bias`, the additive padding mask GPT2Model builds from run_clm's all-ones attention_mask (b x 1 x 1 x s),
    nn.Softmax in the scores' dtype, `.type(value.dtype)` and attn_dropout at GPT-2's attn_pdrop = 0.1, as CUDA runs
    nn.Dropout in training: aten's native_dropout (Dropout.cpp is_fused_kernel_acceptable; the CPU's nn.Dropout
    takes the unfused bernoulli path instead, so the op is called directly)."""
    k, v = k.expand(-1, H, -1, -1), v.expand(-1, H, -1, -1)
    causal = torch.tril(torch.ones((S, S), dtype=torch.uint8)).view(1, 1, S, S).bool()
    masked_bias = torch.tensor(-1e4)
    padding = (1.0 - torch.ones(B, S, dtype=q.dtype)[:, None, None, :]) * -10000.0
    w = torch.matmul(q, k.transpose(-1, -2))
    w = w / (float(v.size(-1)) ** 0.5)
    w = torch.where(causal, w, masked_bias.to(w.dtype))
    w = w + padding
    w = nn.Softmax(dim=-1)(w)
    w = w.type(v.dtype)
    w = torch.native_dropout(w, 0.1, True)[0]
    return torch.matmul(w, v)


def _expected(kernel: str, dtype: torch.dtype) -> tuple[float, float]:
    elem = torch.empty((), dtype=dtype).element_size()
    return kn.score_bytes_per_element(kernel, kn.score_dtype(elem, fp16=dtype is torch.float16, cuda=False), elem)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_transformers_eager_attention_passes(dtype: torch.dtype) -> None:
    assert _passes(_hf_eager, dtype) == _expected("hf_eager", dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_gpt2_eager_attention_of_2021_passes(dtype: torch.dtype) -> None:
    """fp16 as DeepSpeed's fp16 engine ran GPT-2 (a half model, no autocast): softmax without a dtype stays 16-bit,
    and the dropout's one-byte mask adds a byte each way."""
    assert _passes(_gpt2_eager_2021, dtype) == _expected("gpt2_eager", dtype)
    elem = torch.empty((), dtype=dtype).element_size()
    cuda = kn.score_bytes_per_element("gpt2_eager", kn.score_dtype(elem, fp16=dtype is torch.float16, cuda=True),
                                      elem)
    assert cuda == (10 * elem + 1, 9 * elem + 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_sdpa_math_kernel_passes_in_the_inputs_dtype(dtype: torch.dtype) -> None:
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        assert _passes(_sdpa_math, dtype) == _expected("sdpa_math", dtype)
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


def test_sdpa_math_kernel_of_torch_2_5_on_upcasts_to_fp32() -> None:
    """From 2.5 the math kernel computes 16-bit inputs in fp32 (an fp32 add and softmax, a 16-bit copy of P): more
    than PyTorch 2.0's count, which is why "sdpa_math" names the 2.0-2.4 kernel."""
    fwd, bwd = _passes(_sdpa_math, torch.bfloat16)
    assert (fwd, bwd) == (4 * 4 + 4 + 2, 3 * 4)
    assert fwd > _expected("sdpa_math", torch.bfloat16)[0]


def test_fp16_on_cuda_skips_softmax_s_fp32_copy() -> None:
    """fp16 on CUDA: softmax reads 16 bits and writes fp32 in one kernel (SoftMax.cpp half_to_float), so the eager
    forward moves 2 x 4 bytes less than bf16's, and backward writes its gradient in 16 bits."""
    bf16 = kn.score_bytes_per_element("hf_eager", kn.score_dtype(2, fp16=False, cuda=True), 2)
    fp16 = kn.score_bytes_per_element("hf_eager", kn.score_dtype(2, fp16=True, cuda=True), 2)
    assert bf16 == (28, 28) and fp16 == (20, 20)


def test_math_kernel_moves_fewer_bytes_than_transformers_eager() -> None:
    for dtype in ("16-bit", "fp16-cuda", "fp32"):
        elem = 4 if dtype == "fp32" else 2
        math = kn.score_bytes_per_element("sdpa_math", dtype, elem)
        eager = kn.score_bytes_per_element("hf_eager", dtype, elem)
        fused = kn.score_bytes_per_element("fused_softmax", dtype, elem)
        assert fused[0] < math[0] < eager[0] and fused[1] == math[1] < eager[1]


def test_attention_memory_time_counts_every_head_and_layer() -> None:
    m = ModelSpec(name="t", model_type="llama", vocab_size=1000, hidden_size=512, intermediate_size=1024,
                  num_layers=4, num_heads=8, num_kv_heads=1, head_dim=64, tie_embeddings=True)
    gpu = GPUS["A100-40G"]
    fwd, bwd = kn.attention_memory_s(m, "sdpa_math", "16-bit", 2, 1024, 4, 1, 2.0, gpu)
    elements = 4 * 2 * 8 * 1024 * 1024
    assert fwd == pytest.approx(elements * 8 / gpu.elementwise_bytes_per_s)
    assert bwd == pytest.approx(elements * 6 / gpu.elementwise_bytes_per_s)
    half_tp = kn.attention_memory_s(m, "sdpa_math", "16-bit", 2, 1024, 4, 2, 2.0, gpu)
    assert half_tp[0] == pytest.approx(fwd / 2)
    assert kn.attention_memory_s(m, None, "16-bit", 2, 1024, 4, 1, 2.0, gpu) == (0.0, 0.0)
    assert kn.attention_shapes(m) == ((1.0, AttentionShape(heads=8, kv_heads=1, qk_head_dim=64, v_head_dim=64)),)
