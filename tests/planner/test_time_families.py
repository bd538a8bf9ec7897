"""The pass-by-pass time model on the architectures read from transformers (planner/kernels.py, planner/timing.py,
planner/collectives.py): attention per layer kind (windows, latent attention's head sizes, which kernel runs), GEMMs
per linear (active experts, share of the layers, expert parallelism, peft's ParamWrapper fold), and DeepSpeed's
reduce buckets filled tensor by tensor."""

from __future__ import annotations

import dataclasses
import math

import pytest

from planner import collectives as col
from planner import kernels as kn
from planner.build import build_config
from planner.gpus import gpu_from_name
from planner.model_layers import AttentionShape
from planner.models import from_name
from planner.strategy import Attn, FsdpStrategy, GradCkpt, Method
from planner.timing import step_time

H100 = gpu_from_name("H100")
PEAK = H100.peak_bf16_flops_per_s


def _computed_blocks(s: int, window: int, kind: str, block: int = kn.FLASH_BLOCK_ROWS) -> float:
    """Blocks with at least one visible (query, key) pair, by brute force over the blocks' corners."""
    n = math.ceil(s / block)
    count = 0
    for i in range(n):
        for j in range(i + 1):
            q0, q1, k0, k1 = i * block, min(s, (i + 1) * block) - 1, j * block, min(s, (j + 1) * block) - 1
            if kind == "chunked":
                visible = any(q // window == k // window for q in (q0, q1) for k in (k0, k1) if k <= q) or \
                    (q0 // window <= k1 // window and k0 // window <= q1 // window)
            else:
                visible = k1 > q0 - window  # the block's last key is within the window of its first query
            count += visible
    return count / (n * n)


@pytest.mark.parametrize(("s", "window", "kind"), [(4096, 128, "sliding"), (4096, 1024, "sliding"),
                                                   (8192, 4096, "sliding"), (16384, 8192, "chunked"),
                                                   (4096, 0, ""), (1000, 128, "sliding")])
def test_flash_block_share_follows_the_window(s: int, window: int, kind: str) -> None:
    share = kn.attended_block_share(s, window, kind)
    if window <= 0:
        assert share == kn.causal_block_share(s)
    else:
        assert share == pytest.approx(_computed_blocks(s, window, kind), abs=1.0 / (s // 128) ** 2 * 2)
        assert share < kn.causal_block_share(s)


def test_attention_follows_each_layer_kind() -> None:
    """gpt-oss alternates 128-token windows with full layers: FlashAttention skips most of the windowed layers' blocks;
    SDPA with the window's explicit mask computes them all (transformers' _ignore_causal_mask_sdpa); DeepSeek-V3's
    latent attention counts query/key heads of 192 and value heads of 128."""
    oss = from_name("gpt-oss-20b")
    windowed, full = (k.attention for k in oss.layer_kinds)
    assert windowed.window == 128 and full.window == 0
    flash, _ = kn.flash_attention_s(oss, 1, 4096, 1, H100, PEAK, 0.35, Attn.flash)
    masked, _ = kn.flash_attention_s(oss, 1, 4096, 1, H100, PEAK, 0.35, Attn.sdpa)
    only_full = dataclasses.replace(oss, layer_kinds=tuple(dataclasses.replace(k, attention=full)
                                                           for k in oss.layer_kinds))
    causal, _ = kn.flash_attention_s(only_full, 1, 4096, 1, H100, PEAK, 0.35, Attn.flash)
    assert flash < 0.6 * causal  # half the layers attend to 128 keys, not (s + 1) / 2
    assert masked > causal  # the masked layers run every block
    ds = from_name("deepseek-v3")
    a = ds.layer_kinds[0].attention
    assert (a.kind, a.qk_head_dim, a.v_head_dim) == ("mla", 192, 128)
    fwd, _ = kn.flash_attention_s(ds, 1, 4096, 1, H100, PEAK, 0.35)
    heads = a.heads
    tiles = heads * 32
    waves = tiles / (math.ceil(tiles / H100.sm_count) * H100.sm_count)
    expected = 4096 * 2.0 * 4096 * heads * (192 + 128) * kn.causal_block_share(4096) / (PEAK * 0.35 * waves)
    assert fwd == pytest.approx(expected, rel=1e-9)


def test_hand_written_attention_is_one_causal_kind() -> None:
    m = from_name("llama-2-7b")
    ((share, a),) = kn.attention_shapes(m)
    assert share == 1.0 and a == AttentionShape(heads=32, kv_heads=32, qk_head_dim=128, v_head_dim=128)


def test_gemms_weight_each_linear_by_its_layers_and_split_experts_over_ep() -> None:
    """DeepSeek-V3's dense MLP lives in 3 of 61 layers, its experts in 58: a mean layer's GEMM time weights each by
    its share. Expert parallelism runs experts / ep experts per rank on ep times the rows."""
    m = from_name("deepseek-v3")
    fwd, _ = kn.layer_gemms(m, 4096, Method.full, 8, ("all",), True, 1)
    by_name = {}
    for g, lin in zip(fwd, m.linears(), strict=True):
        by_name.setdefault(lin.path, g)
    assert by_name["mlp.gate_proj"].weight == pytest.approx(3 / 61)
    assert by_name["mlp.experts.gate_up_proj"].weight == pytest.approx(58 / 61)
    experts = by_name["mlp.experts.gate_up_proj"]
    assert experts.grouped and experts.count == 256 and experts.m == round(4096 * 8 / 256)
    fwd8, _ = kn.layer_gemms(m, 4096, Method.full, 8, ("all",), True, 1, 8)
    split = next(g for g, lin in zip(fwd8, m.linears(), strict=True) if lin.path == "mlp.experts.gate_up_proj")
    assert (split.count, split.m) == (32, experts.m * 8) and split.weight > experts.weight  # busiest rank


def test_lora_on_wrapped_experts_pays_the_fold() -> None:
    """peft folds LoRA into the fused experts' weight every forward (reading W, writing W') and needs their weight
    gradient in backward: LoRA on all linears of Qwen3-30B-A3B runs those on top of its attention adapters, and no
    input-side branch for the wrapped experts."""
    m = from_name("qwen3-30b-a3b")
    fwd, bwd = kn.layer_gemms(m, 4096, Method.lora, 8, ("all",), False, 1)
    gate_up = next(lin for lin in m.linears() if lin.name == "experts.gate_up_proj")
    k, n = gate_up.in_features, gate_up.out_features
    fold = [g for g in fwd if g.reads]
    assert any((g.m, g.k, g.n, g.count, g.reads) == (k, 16, n, 128, k * n) for g in fold)  # gate_up at rank 2r
    assert any(g.grouped and (g.m, g.n) == (k, n) for g in bwd)  # the experts' weight gradient
    assert not any(g.grouped and g.n == 8 for g in fwd)  # no rank-r GEMMs on routed rows
    assert kn.lora_dropout_values(m, 10, ("all",)) == kn.lora_dropout_values(m, 10, ("q_proj", "k_proj", "v_proj",
                                                                                        "o_proj"))
    kw = dict(model="qwen3-30b-a3b", gpus="8xH100", fsdp=FsdpStrategy.full_shard, micro_batch=4, seq_len=4096,
              attn=Attn.flash, grad_ckpt=GradCkpt.full, check=False)
    everything = step_time(build_config(**kw)).breakdown_s["compute"]
    attention = step_time(build_config(lora_targets="q_proj,k_proj,v_proj,o_proj", **kw)).breakdown_s["compute"]
    assert everything > attention


def _greedy(sizes: list[float], bucket: float) -> int:
    calls, filled = 0, 0.0
    for size in sizes:
        if filled > 0 and filled + size > bucket:
            calls, filled = calls + 1, 0.0
        filled += size
    return calls + (filled > 0)


@pytest.mark.parametrize("model", ["llama-2-7b", "qwen3-30b-a3b", "deepseek-v3"])
def test_reduce_buckets_follow_deepspeeds_rule(model: str) -> None:
    """DeepSpeed reduces a bucket when the next gradient would overflow it and a tensor larger than the bucket
    alone: for a MoE model about one call per fused expert tensor, far fewer than params / bucket."""
    m = from_name(model)
    bucket = m.hidden_size ** 2
    sizes: list[float] = []
    kinds = [(k.count, k.linears, k.norms) for k in m.layer_kinds] or [(m.num_layers, m.linears(), ())]
    for count, lins, norms in kinds:
        layer = [float(n.width) for n in norms] or [float(m.hidden_size)] * 2
        layer += [float(lin.copies * lin.in_features * lin.out_features) for lin in lins]
        layer += [float(lin.copies * lin.out_features) for lin in lins if lin.bias]
        for _ in range(count):
            sizes += sorted(layer)  # the order within a layer moves the count by a few calls at most
    calls = col.reduce_bucket_calls(m, m.num_layers, Method.full, 8, ("all",), 1, bucket)
    assert calls == pytest.approx(_greedy(sizes, bucket), rel=0.25)
    large = sum(1 for size in sizes if size > bucket)
    assert large <= calls <= len(sizes)


def test_lora_reduce_buckets_hold_a_and_b_at_their_own_sizes() -> None:
    """peft's lora_A is r x in and lora_B out x r (peft/tuners/lora/layer.py update_layer): the gradients DeepSpeed
    packs are these two sizes, A then B per adapted linear (backward reaches them last-first), not two halves."""
    m = from_name("llama-2-7b")
    r, h, i = 8, m.hidden_size, m.intermediate_size
    bucket = i * r  # exactly one lora_B of gate_proj / up_proj
    sizes = dict(col.reduce_bucket_sizes(m, 1, Method.lora, r, ("gate_proj", "up_proj"), 1, bucket))
    # backward meets up_proj's B (fills the bucket), its A, then gate_proj's B (overflows: flush A), its A
    assert sizes == {float(i * r): 2, float(r * h): 2}
