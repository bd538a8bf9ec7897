"""FSDP2's units as accelerate 1.16 makes them (planner.engines.fsdp): the tail (final norm and head) kept gathered
into backward, not the embedding; the tail's reduce-scatter in backward and the embedding's at the end of backward,
with gloo's copy of the reduce-scatter input on the CPU device only. Measured on 2 CPU ranks in
tests/validation/test_memory_sharded_measured.py (fsdp2-vocab) and benchmarks/accuracy.py (134M FSDP)."""

from __future__ import annotations

import dataclasses

import pytest

from planner import parallel_comm as pc
from planner.build import build_config
from planner.engines import fsdp
from planner.engines.fsdp2_traffic import fsdp2_traffic, is_weights_tied, outside_units
from planner.memory import memory_per_gpu, model_states
from planner.params import embedding_params, head_params, layer_params, norm_params
from planner.states import param_counts, stage_params
from planner.strategy import FsdpStrategy, Method, Precision, Stage, TrainConfig


def _cfg(gpus: str, version: int = 2, method: Method = Method.full, model: str = "7b", seq_len: int = 256,
         stage: Stage = Stage.sft) -> TrainConfig:
    return build_config(model=model, gpus=gpus, method=method, precision=Precision.fp32, fsdp=FsdpStrategy.full_shard,
                        fsdp_version=version, seq_len=seq_len, stage=stage, check=False)


def test_fsdp2_keeps_the_tail_gathered_and_fsdp1_the_whole_root() -> None:
    two, one = _cfg("8xA800"), _cfg("8xA800", version=1)
    m = two.model
    got2 = fsdp.buffers(two, stage_params(two, first=True), 1.0, first=True)
    got1 = fsdp.buffers(one, stage_params(one, first=True), 1.0, first=True)
    assert got2["FSDP unsharded parameters"] == 4.0 * head_params(m)
    assert got1["FSDP unsharded parameters"] == 4.0 * (embedding_params(m) + head_params(m))


@pytest.mark.parametrize("gpus", ["2xCPU", "8xA800"])
def test_the_reduce_scatters_of_the_tail_and_the_embedding(gpus: str) -> None:
    cfg = _cfg(gpus)
    m, sp, n = cfg.model, stage_params(cfg, first=True), cfg.dp
    vh = 4.0 * m.vocab_size * m.hidden_size
    copy = vh if gpus.endswith("CPU") else 0.0  # gloo's full-size copy of the reduce-scatter input
    tail = 4.0 * head_params(m)
    assert fsdp.fsdp2_head_reduce_scatter_bytes(cfg, sp) == pytest.approx(
        tail / n + 4.0 * layer_params(m) + (tail if copy else 0.0))
    end = fsdp.end_items(cfg, sp)
    assert end.pop("gloo reduce-scatter copy", 0.0) == copy
    assert end == {"FSDP2 embedding gradient, unsharded": vh, "FSDP2 embedding reduce-scatter input": vh}


def test_no_reduce_scatter_terms_without_trained_untied_embedding_and_head() -> None:
    lora = _cfg("2xCPU", method=Method.lora)
    tied = _cfg("2xCPU", model="qwen3-0.6b")
    assert tied.model.tie_embeddings
    for cfg in (lora, tied):
        sp = stage_params(cfg, first=True)
        assert fsdp.end_items(cfg, sp) == {} and fsdp.fsdp2_head_reduce_scatter_bytes(cfg, sp) == 0.0
    one = _cfg("2xCPU", version=1)
    assert fsdp.fsdp2_head_reduce_scatter_bytes(one, stage_params(one, first=True)) == 0.0


def test_frozen_layers_keep_the_heads_reduce_scatter_not_the_embeddings() -> None:
    """--freeze-layers freezes the embedding and the first layers, not the head: the tail still reduces in backward
    (measured: tests/validation/test_memory_sharded_measured.py fsdp2-vocab-freeze), the embedding reduces nothing."""
    cfg = dataclasses.replace(_cfg("2xCPU"), freeze_layers=2)
    sp = stage_params(cfg, first=True)
    assert fsdp.fsdp2_head_reduce_scatter_bytes(cfg, sp) > 0.0
    assert fsdp.end_items(cfg, sp) == {}


def _calls(calls: tuple[tuple[float, int], ...]) -> int:
    return sum(n for _, n in calls)


@pytest.mark.parametrize(("model", "method", "freeze", "strategy", "expected"), [
    # (forward gathers, backward gathers, reduce-scatters) per micro-batch, L decoder layers
    ("7b", Method.full, 0, FsdpStrategy.full_shard, lambda L: (L + 2, L + 1, L + 2)),
    ("7b", Method.full, 3, FsdpStrategy.full_shard, lambda L: (L + 2, L - 3 + 1, L - 3 + 1)),
    ("7b", Method.lora, 0, FsdpStrategy.full_shard, lambda L: (L + 2, L + 1, L)),
    ("7b", Method.full, 0, FsdpStrategy.shard_grad_op, lambda L: (L + 2, 0, L + 2)),
    ("qwen3-0.6b", Method.full, 0, FsdpStrategy.full_shard, lambda L: (L + 1, L, L + 1)),
    ("qwen3-0.6b", Method.full, 3, FsdpStrategy.full_shard, lambda L: (L + 1, L - 3 + 1, L - 3 + 1)),
    ("qwen3-0.6b", Method.lora, 0, FsdpStrategy.full_shard, lambda L: (L + 1, L, L)),
], ids=["untied", "untied-freeze", "untied-lora", "untied-shard-grad-op", "tied", "tied-freeze", "tied-lora"])
def test_fsdp2_collectives_per_micro_batch(model, method, freeze, strategy, expected) -> None:
    """The counts measured on 2 CPU ranks (tests/validation/test_fsdp2_calls_measured.py) at full size; the gathered
    bytes: every parameter in forward, all but the kept tail in backward (and but the frozen layers not gathered)."""
    cfg = dataclasses.replace(_cfg("8xA800", method=method, model=model), freeze_layers=freeze, fsdp=strategy)
    m, L = cfg.model, cfg.model.num_layers
    counts = param_counts(m, cfg.adapter, cfg.stage)
    t = fsdp2_traffic(cfg, 4.0 * counts.total, 4.0 * counts.trainable)
    assert (_calls(t.forward_gathers), _calls(t.backward_gathers), _calls(t.reduce_scatters)) == expected(L)
    assert sum(b * n for b, n in t.forward_gathers) == pytest.approx(4.0 * counts.total)
    assert sum(b * n for b, n in t.reduce_scatters) == pytest.approx(4.0 * counts.trainable)
    if strategy is FsdpStrategy.full_shard and not freeze:
        tail = 4.0 * outside_units(cfg).tail
        assert sum(b * n for b, n in t.backward_gathers) == pytest.approx(4.0 * counts.total - tail)


def test_fsdp1_keeps_one_unit_per_layer_and_the_root() -> None:
    cfg = _cfg("8xA800", version=1)
    counts = param_counts(cfg.model, cfg.adapter, cfg.stage)
    passes = fsdp.pass_seconds(cfg, pc.dp_group(cfg.cluster, 1, 1, cfg.dp, 1.0), counts.trainable, 4.0 * counts.total)
    units = cfg.model.num_layers + 1
    assert (passes.gather_calls, passes.reduce_scatter_calls) == (2 * units, units)


def test_the_end_of_backward_holds_the_embedding_reduce_scatter() -> None:
    """With a vocabulary much larger than a layer (Llama 3's 128256 x 4096 against a layer's 218M), and no
    activations to speak of, the end of backward is the peak: every gradient shard, the embedding's unsharded gradient
    and its reduce-scatter input (and gloo's copy). Llama 2's 32000 x 4096 is smaller than its layer: there the first
    layer's reduce-scatter, nearly every shard made, peaks (planner.engines.fsdp fsdp2_layer_reduce_scatter_bytes)."""
    mem = memory_per_gpu(_cfg("2xCPU", seq_len=8, model="llama-3-8b"))
    assert mem.phase == "gradients"
    assert {"FSDP2 embedding gradient, unsharded", "FSDP2 embedding reduce-scatter input",
            "gloo reduce-scatter copy"} <= set(mem.other_items)


@pytest.mark.parametrize("model", ["7b", "qwen3-0.6b"])
@pytest.mark.parametrize("stage", [Stage.sft, Stage.rm])
def test_memory_keeps_the_tail_the_traffic_gathers(model: str, stage: Stage) -> None:
    """One rule for the tail and the root (fsdp2_traffic.outside_units): the bytes memory keeps gathered into backward
    are the bytes the traffic leaves out of backward's gathers, tied or not, language or reward model."""
    cfg = _cfg("8xA800", model=model, stage=stage)
    out = outside_units(cfg)
    got = fsdp.buffers(cfg, stage_params(cfg, first=True), 1.0, first=True)
    assert got["FSDP unsharded parameters"] == 4.0 * (out.tail + out.root)
    counts = param_counts(cfg.model, cfg.adapter, cfg.stage)
    t = fsdp2_traffic(cfg, 4.0 * counts.total, 4.0 * counts.trainable)
    assert sum(b * n for b, n in t.backward_gathers) == pytest.approx(
        4.0 * counts.total - got["FSDP unsharded parameters"])


@pytest.mark.parametrize("model", ["7b", "qwen3-0.6b"])
def test_a_reward_models_tail_is_the_final_norm(model: str) -> None:
    """AutoModelForSequenceClassification has no `lm_head`: `get_output_embeddings` is None, so accelerate ties
    nothing, shards the embedding as its own unit and the tail as [final norm] (the `score` stays in the root, which
    torch never reshards after forward and whose gradient waits for the root's final callback): even a tied model's
    embedding reduces at backward's end and its tail once its backward is over."""
    cfg = _cfg("2xCPU", model=model, stage=Stage.rm)
    m, sp = cfg.model, stage_params(cfg, first=True)
    norm, vh, score = 4.0 * norm_params(m), 4.0 * m.vocab_size * m.hidden_size, 4.0 * m.hidden_size
    got = fsdp.buffers(cfg, sp, 1.0, first=True)
    assert got["FSDP unsharded parameters"] == norm + score
    assert got["FSDP unsharded gradients"] == norm + score
    assert fsdp.fsdp2_head_reduce_scatter_bytes(cfg, sp) == pytest.approx(
        norm / cfg.dp + 4.0 * layer_params(m) + norm)
    assert fsdp.end_items(cfg, sp) == {"FSDP2 embedding gradient, unsharded": vh,
                                       "FSDP2 embedding reduce-scatter input": vh, "gloo reduce-scatter copy": vh}


@pytest.mark.parametrize(("model", "stage"), [("7b", Stage.sft), ("7b", Stage.rm), ("qwen3-0.6b", Stage.rm)])
def test_the_held_head_gradient_is_the_tail_and_the_score(model: str, stage: Stage) -> None:
    """An untied model's head gradient that FSDP2 holds in backward (buffers' "FSDP unsharded gradients", read from
    planner.states.output_params) is what its units train of it: the tail's trained elements and the root's score."""
    cfg = _cfg("8xA800", model=model, stage=stage)
    assert not is_weights_tied(cfg)
    out = outside_units(cfg)
    got = fsdp.buffers(cfg, stage_params(cfg, first=True), 1.0, first=True)
    score = cfg.model.hidden_size if stage is Stage.rm else 0
    assert got["FSDP unsharded gradients"] == 4.0 * (out.tail_trained + score)


@pytest.mark.parametrize("gpus", ["2xCPU", "8xA800"])
def test_the_layer_above_reduce_scatter_input_is_the_cpus_only(gpus: str) -> None:
    """The layer above's reduce-scatter input is live in a layer's reduce-scatter over gloo (measured on 2 CPU ranks:
    tests/validation/test_memory_sharded_measured.py fsdp2); on CUDA FSDP2's post_backward drops the last ref before
    the next copy-in (planner.engines.fsdp fsdp2_previous_reduce_scatter_input_bytes)."""
    cfg = _cfg(gpus)
    layer = 4.0 * layer_params(cfg.model)
    assert fsdp.fsdp2_previous_reduce_scatter_input_bytes(cfg, layer) == (layer if gpus.endswith("CPU") else 0.0)

def test_the_last_linears_gradients_open_fsdp2s_last_layer_window() -> None:
    """FSDP2's last-layer window holds, at its start, the down projection's weight gradient and its input's
    (planner.engines.fsdp fsdp2_first_linear_backward_bytes; measured with accumulation under no_sync in
    tests/runner/test_sync_each_batch.py); not FSDP1's, LoRA's or a MoE layer's."""
    cfg = _cfg("8xA800")
    m, sp = cfg.model, stage_params(cfg, first=True)
    tokens = 2 * 256
    got = fsdp.fsdp2_first_linear_backward_bytes(cfg, sp, tokens)
    assert got == 4.0 * m.intermediate_size * m.hidden_size + 4.0 * tokens * m.intermediate_size
    for other in (_cfg("8xA800", version=1), _cfg("8xA800", method=Method.lora), _cfg("8xA800", model="mixtral-8x7b")):
        assert fsdp.fsdp2_first_linear_backward_bytes(other, stage_params(other, first=True), tokens) == 0.0


def test_rank0_holds_the_padded_chunk_of_small_first_dims() -> None:
    """FSDP2 pads each shard to chunk 0's rows (planner.engines.fsdp fsdp2_rank0_padding_elements): a reward model's
    1 x h score is whole on rank 0 (measured on 2 CPU ranks: tests/validation/test_memory_sharded_measured.py
    fsdp2-rm), 8 fused experts over 16 ranks one expert each (and the router's row); dims the group divides pad
    nothing, FSDP1 nothing."""
    rm = _cfg("8xA800", stage=Stage.rm)
    h = rm.model.hidden_size
    assert fsdp.fsdp2_rank0_padding_elements(rm, 8) == (h * (1 - 1 / 8), h * (1 - 1 / 8))
    sft = _cfg("8xA800")
    assert fsdp.fsdp2_rank0_padding_elements(sft, 8) == (0.0, 0.0)
    assert fsdp.fsdp2_rank0_padding_elements(_cfg("8xA800", version=1, stage=Stage.rm), 8) == (0.0, 0.0)
    moe = _cfg("16xA800", model="mixtral-8x7b")
    m = moe.model
    # per layer one fused expert of each tensor and one row of the router's E x h weight
    experts = sum(lin.in_features * lin.out_features for lin in m.linears() if lin.copies > 1) + m.hidden_size
    got_all, got_trained = fsdp.fsdp2_rank0_padding_elements(moe, 16)
    assert got_all == got_trained == pytest.approx(m.num_layers * experts * (1 - 8 / 16))
    lora_all, lora_trained = fsdp.fsdp2_rank0_padding_elements(_cfg("16xA800", model="mixtral-8x7b",
                                                                    method=Method.lora), 16)
    assert lora_all == got_all and lora_trained == 0.0
    one = _cfg("8xA800", version=1, stage=Stage.rm)
    two, one = (model_states(c, stage_params(c, first=True), 8) for c in (rm, one))
    # fp32 AdamW: the weight, the gradient and two states, 4 bytes each
    assert (two.weights - one.weights, two.gradients - one.gradients, two.optimizer - one.optimizer) == \
        pytest.approx((4.0 * h * (1 - 1 / 8), 4.0 * h * (1 - 1 / 8), 8.0 * h * (1 - 1 / 8)))
