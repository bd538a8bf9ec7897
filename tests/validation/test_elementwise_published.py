"""The share of the memory bandwidth that memory-bound kernels reach on the bytes the planner counts for them
(planner/gpus.py ELEMENTWISE_BANDWIDTH_FRACTION), from published kernel benchmarks.

Source: Liger-Kernel's benchmark table (linkedin/Liger-Kernel, benchmark/data/all_benchmark_data.csv, median of
`triton.testing.do_bench`, milliseconds, forward + backward "full" mode), rows for transformers' and torch's own
modules and for Liger's kernels on A100-SXM4-80GB and H100 80GB HBM3. Each row's time is taken as the slope between
its two largest sizes, so launch and timing overheads cancel; its bytes are counted as the planner counts a
layer's (planner/kernels.py): every aten op's inputs and outputs under a dispatch mode, here on small CPU tensors
(bytes scale with the element count), or, for Liger's Triton kernels, which a dispatch mode does not see, the
planner's fused-kernel formulas. fraction = bytes / (slope x datasheet bandwidth). Tolerance: the planner's value is
the median of the rows within 0.05, and every row lies in [0.3, 1.05] (a row above 1 would mean the count misses
no traffic but the kernel beats the datasheet).
"""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from planner import kernels as kn
from planner.gpus import ELEMENTWISE_BANDWIDTH_FRACTION, GPUS

# views and tensor metadata move no bytes
_VIEWS = {"view", "_unsafe_view", "t", "transpose", "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided",
          "permute", "reshape", "alias", "detach", "split", "unbind", "split_with_sizes", "narrow"}


class _Bytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ not in _VIEWS:
            self.total += _nbytes(list(args)) + _nbytes(list((kwargs or {}).values())) + _nbytes(out)
        return out


def _nbytes(x: object) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(y) for y in x)
    return 0


def _rmsnorm(dtype: torch.dtype, residual: bool, m: int = 64, n: int = 256) -> float:
    """Bytes per element of forward + backward: transformers' LlamaRMSNorm with an fp32 weight (the benchmark's
    module), on a bf16 input; with `residual`, the benchmark's eager add of a residual in fp32 first."""
    norm = LlamaRMSNorm(n)
    x = torch.randn(m, n, dtype=dtype, requires_grad=True)
    r = torch.randn(m, n, dtype=dtype, requires_grad=True)
    grads = [torch.randn(m, n, dtype=dtype)] * (2 if residual else 1)
    with _Bytes() as count:
        h = x.float() + r.float() if residual else x
        outs = (norm(h), h.to(dtype)) if residual else (norm(h),)
        torch.autograd.backward(outs, grads)
    return count.total / (m * n)


def _rope(s: int = 64, q_heads: int = 4, kv_heads: int = 1, d: int = 32) -> float:
    """Bytes per rotated value of forward + backward: transformers' apply_rotary_pos_emb on bf16 q and k, transposed
    from (b, s, heads, d) as the benchmark makes them."""
    q = torch.randn(1, s, q_heads, d, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, s, kv_heads, d, dtype=torch.bfloat16, requires_grad=True)
    angles = torch.outer(torch.arange(s).float(), torch.rand(d // 2)).repeat(1, 2)
    cos, sin = angles.cos()[None].bfloat16(), angles.sin()[None].bfloat16()
    dq, dk = torch.randn(1, q_heads, s, d, dtype=torch.bfloat16), torch.randn(1, kv_heads, s, d, dtype=torch.bfloat16)
    with _Bytes() as count:
        qo, ko = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        torch.autograd.grad((qo, ko), (q, k), (dq, dk))
    return count.total / (s * (q_heads + kv_heads) * d)


def _cross_entropy(n: int = 32, v: int = 512) -> float:
    x = torch.randn(n, v, requires_grad=True)
    with _Bytes() as count:
        nn.CrossEntropyLoss()(x, torch.randint(v, (n,))).backward()
    return count.total / (n * v)


def _layer_norm(m: int = 64, n: int = 256) -> float:
    x = torch.randn(m, n, requires_grad=True)
    with _Bytes() as count:
        nn.LayerNorm(n)(x).backward(torch.randn(m, n))
    return count.total / (m * n)


A100, H100 = GPUS["A100-80G"].hbm_bytes_per_s, GPUS["H100"].hbm_bytes_per_s
# (row, bandwidth, elements between the two sizes, ms at the smaller, ms at the larger, bytes per element)
ROWS = (
    ("LlamaRMSNorm bf16, A100, M 2048, N 16384 -> 32768", A100, 2048 * 16384, 3.544, 6.910,
     lambda: _rmsnorm(torch.bfloat16, residual=False)),
    ("apply_rotary_pos_emb bf16, A100, 32 + 8 heads of 256, T 8192 -> 16384", A100, 8192 * 40 * 256, 4.248, 8.366,
     lambda: _rope()),
    ("CrossEntropyLoss fp32, A100, 16384 tokens, V 65536 -> 131072", A100, 16384 * 65536, 30.778, 60.438,
     lambda: _cross_entropy()),
    ("LayerNorm fp32, A100, M 4096, N 8192 -> 16384", A100, 4096 * 8192, 0.830, 1.621, lambda: _layer_norm()),
    ("residual add + LlamaRMSNorm fp32, H100, M 2048, N 16384 -> 32768", H100, 2048 * 16384, 1.874, 3.634,
     lambda: _rmsnorm(torch.float32, residual=True)),
    ("LayerNorm fp32, H100, M 4096, N 8192 -> 16384", H100, 4096 * 8192, 0.483, 0.951, lambda: _layer_norm()),
    # Liger's Triton kernels: forward reads x, writes y; backward reads dy and x, writes dx (bf16: 10 bytes)
    ("Liger RMSNorm bf16, A100, M 2048, N 8192 -> 16384", A100, 2048 * 8192, 0.294, 0.411, lambda: 10.0),
    # the planner's fused cross-entropy count per logit (kn.loss_elementwise_bytes, fused) on fp32 logits
    ("Liger CrossEntropy fp32, A100, 16384 tokens, V 65536 -> 131072", A100, 16384 * 65536, 11.925, 25.223,
     lambda: kn.loss_elementwise_bytes(1, 4.0, True)),
)


def _fractions() -> dict[str, float]:
    out = {}
    for name, bandwidth, elements, t_small_ms, t_large_ms, count in ROWS:
        slope_s = (t_large_ms - t_small_ms) / 1e3
        out[name] = count() * elements / (slope_s * bandwidth)
    return out


@pytest.fixture(scope="module")
def fractions() -> dict[str, float]:
    return _fractions()


def test_each_published_row_reaches_a_plausible_share(fractions: dict[str, float]) -> None:
    for name, f in fractions.items():
        print(f"[elementwise] {name}: {f:.2f} of the datasheet bandwidth")
        assert 0.3 <= f <= 1.05, name


def test_planner_fraction_is_the_median_of_the_rows(fractions: dict[str, float]) -> None:
    assert statistics.median(fractions.values()) == pytest.approx(ELEMENTWISE_BANDWIDTH_FRACTION, abs=0.05)
