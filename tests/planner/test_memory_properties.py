"""Properties of the memory model (hypothesis): monotonic in micro-batch and sequence length, ZeRO
stages never add model-state memory, offload never adds GPU memory, totals are the sum of their
categories, and every valid search candidate has a finite positive total. Drawn over one model of every
catalog family (config.json model_type: the MoE ones, gpt-oss at its default eager attention, Gemma 3's
sliding windows, DeepSeek-V3's MLA) and the switches: FSDP1/FSDP2 and their sharding strategies, TP/PP, expert
parallelism, every training stage (the online RL ones included)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from catalog_families import FAMILIES, offload_ladder
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planner import nccl_memory
from planner.activations import derived_layer_bytes_per_token
from planner.gpus import parse_gpus
from planner.memory import BACKWARD_ONLY_ITEMS, CATEGORIES, MemoryBreakdown, memory_per_gpu
from planner.memory_knobs import layer_training
from planner.models import from_name
from planner.rl.settings import is_online_rl
from planner.search import _ENGINES, SearchSpace, candidates
from planner.strategy import (
    Attn,
    Engine,
    FsdpVersion,
    GradCkpt,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
    Stage,
    TrainConfig,
    ZeroStage,
)
from planner.validity import default_attn, problems

# every catalog family (tests/planner/catalog_families.py) and the older models this file began with
MODELS = ("llama-2-7b", "llama-3-8b", *FAMILIES)
CLUSTERS = ("1xA800", "8xA800", "2x8xH100", "4xRTX4090")
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.filter_too_much])


@st.composite
def configs(draw: st.DrawFn) -> TrainConfig:
    cluster = parse_gpus(draw(st.sampled_from(CLUSTERS)))
    model = from_name(draw(st.sampled_from(MODELS)))
    engine, zero, fsdp, offload, device = draw(st.sampled_from(_ENGINES))
    fsdp_version = draw(st.sampled_from(list(FsdpVersion))) if engine is Engine.fsdp else FsdpVersion.TWO
    method = draw(st.sampled_from(list(Method)))
    quant = Quant.nf4 if method is Method.qlora else Quant.none
    powers = [k for k in (1, 2, 4, 8) if cluster.world_size % k == 0]
    tp = draw(st.sampled_from(powers))
    pp = draw(st.sampled_from([k for k in powers if cluster.world_size % (tp * k) == 0]))
    dp = cluster.world_size // (tp * pp)
    # expert parallelism: FSDP without TP or PP, a degree dividing the experts and the data-parallel ranks
    eps = [k for k in powers if dp % k == 0 and model.num_experts % k == 0] \
        if model.is_moe and engine is Engine.fsdp and tp == pp == 1 else [1]
    cfg = TrainConfig(
        model=model, cluster=cluster, method=method, quant=quant, engine=engine, zero=zero, fsdp=fsdp,
        offload=offload, offload_device=device, fsdp_version=fsdp_version, tp=tp, pp=pp, ep=draw(st.sampled_from(eps)),
        lora_r=draw(st.sampled_from([4, 8, 64])),
        precision=draw(st.sampled_from([Precision.bf16_mixed, Precision.bf16_true, Precision.fp32])),
        optimizer=draw(st.sampled_from([Optimizer.adamw, Optimizer.adamw_8bit, Optimizer.sgd])),
        micro_batch=draw(st.integers(1, 16)), grad_accum=draw(st.integers(1, 16)),
        seq_len=draw(st.sampled_from([128, 512, 2048, 4096])), grad_ckpt=draw(st.sampled_from(list(GradCkpt))),
        attn=draw(st.sampled_from([default_attn(model), *Attn])), stage=draw(st.sampled_from(list(Stage))),
        sequence_parallel=tp > 1 and draw(st.booleans()))
    assume(not problems(cfg))
    return cfg


def states(mem: MemoryBreakdown) -> float:
    return mem.weights + mem.gradients + mem.optimizer


@SETTINGS
@given(configs(), st.integers(1, 16))
def test_monotonic_in_micro_batch(cfg: TrainConfig, extra: int) -> None:
    bigger = replace(cfg, micro_batch=cfg.micro_batch + extra)
    assert memory_per_gpu(bigger).total >= memory_per_gpu(cfg).total


@SETTINGS
@given(configs())
def test_monotonic_in_seq_len(cfg: TrainConfig) -> None:
    longer = replace(cfg, seq_len=cfg.seq_len * 2)
    assert memory_per_gpu(longer).total >= memory_per_gpu(cfg).total


@SETTINGS
@given(configs(), st.sampled_from([Offload.none, Offload.optimizer]))
def test_higher_zero_stage_never_adds_model_states(cfg: TrainConfig, offload: Offload) -> None:
    # pp = 1: with a pipeline the heavier stage is reported, and which one that is may change with the stage;
    # online RL stages may peak while generating, where no gradient exists
    assume(not is_online_rl(cfg.stage))
    stages = [s for s in ZeroStage if offload is Offload.none or s >= ZeroStage.OPTIMIZER_STATES]
    base = replace(cfg, engine=Engine.deepspeed, zero=stages[0], offload=offload, offload_device=OffloadDevice.cpu,
                   precision=Precision.bf16_mixed, pp=1)
    used = [states(memory_per_gpu(replace(base, zero=s))) for s in stages]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(used, used[1:], strict=False)), used


@SETTINGS
@given(configs())
def test_offload_never_adds_gpu_memory(cfg: TrainConfig) -> None:
    ladder = offload_ladder(cfg)
    if not ladder:
        return
    # the tensors (allocated): the allocator's reserve grows with offload (GMLake measures offload fragmenting more)
    totals = [memory_per_gpu(replace(cfg, offload=o, offload_device=OffloadDevice.cpu,
                                     optimizer=Optimizer.adamw)).allocated for o in ladder]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(totals, totals[1:], strict=False)), (str(cfg), totals)


@SETTINGS
@given(configs())
def test_breakdown_agrees_with_its_phase_and_reserve(cfg: TrainConfig) -> None:
    mem = memory_per_gpu(cfg)
    gpu, items = cfg.cluster.gpu, mem.other_items
    # the CUDA context is the GPU's; the allocator reserve is (1/u - 1) x the step's transient tensors, or what FSDP1's
    # init leaves cached above the step's tensors where that is more (planner/memory.py _peak: the reading holds at
    # least that floor, planner.init_allocations.reserved_floor_bytes), capped by the card; NCCL's buffers and the
    # context lie outside the allocator: allocated <= reserved <= device
    assert items["CUDA context and workspaces"] == gpu.runtime_overhead_bytes
    assert items["NCCL communicator buffers"] == pytest.approx(nccl_memory.nccl_bytes(cfg))
    carried = max(mem.reserve_wanted, mem.reserved_floor - mem.tensor_bytes)
    assert 0 <= items["allocator reserve"] <= carried * (1 + 1e-12) + 1e-6
    assert mem.allocated <= mem.reserved <= mem.device == mem.total
    assert mem.fit_bytes <= mem.device_wanted + 1e-6
    # only the backward peak holds activations and the backward-only buffers
    if mem.phase != "backward":
        assert mem.activations == 0 and not set(items) & set(BACKWARD_ONLY_ITEMS)
    assert mem.phase in ("backward", "gradients", "optimizer", "generation")  # generation: online RL stages
    d = mem.as_dict()
    assert abs(sum(d[c] for c in CATEGORIES) - d["total"]) <= len(CATEGORIES)
    assert all(getattr(mem, c) >= 0 for c in CATEGORIES) and mem.host_bytes >= 0 and mem.nvme_bytes >= 0


@pytest.mark.parametrize(("model", "gpus"), [("llama-2-7b", "8xA800"), ("mixtral-8x7b", "2x8xH100"),
                                             ("chatglm3-6b", "4xT4"), ("bloom-7b1", "2xRTX4090")])
def test_every_valid_candidate_has_a_finite_positive_total(model: str, gpus: str) -> None:
    base = TrainConfig(model=from_name(model), cluster=parse_gpus(gpus))
    valid = 0
    for cfg in candidates(base, SearchSpace()):
        if problems(cfg):
            continue
        valid += 1
        total = memory_per_gpu(cfg).total
        assert math.isfinite(total) and total > 0, str(cfg)
    assert valid > 100


def test_gemma3_1b_eager_activations_grow_with_the_sequence() -> None:
    # found by the properties above: the spec cache's eager tables for Gemma 3 1B, fitted from one row and two
    # (profiler/spec_activations.py EAGER_SHAPES), carried C = -368 bytes per token and attended position and
    # K = -176,128 bytes per layer in fp32: the activations fell from 0.26 GiB at 512 tokens to -13.5 GiB at 1024
    # for mb 3 in fp32. Fitted from two rows and more: C = +16 (four heads' fp32 softmax), K = +20,480 (the norms'
    # (1 + weight) scales), 7.12 and 14.86 GiB
    cfg = TrainConfig(model=from_name("gemma-3-1b"), cluster=parse_gpus("8xA800"), method=Method.full,
                      precision=Precision.fp32, micro_batch=3, grad_accum=2, seq_len=512, attn=Attn.eager,
                      stage=Stage.pt)
    assert memory_per_gpu(replace(cfg, seq_len=1024)).activations >= memory_per_gpu(cfg).activations > 0


@pytest.mark.parametrize(("model", "one_row_minus_rows"), [
    ("gemma-3-1b", -2 * (4 - 1) * 256 * 4),  # one key/value head: keys and values saved once, not once per head
    ("deepseek-v3", 128 * 128 * 4),  # MLA's value view keeps kv_b_proj's whole output, k_nope included
    ("qwen3-0.6b", 0)])
def test_one_row_reads_the_eager_one_row_tables(model: str, one_row_minus_rows: int) -> None:
    # profiler/spec_activations.py EAGER_SHAPES: torch.matmul's (batch, heads) fold is a view at one row, a copy
    # beyond it; per token and layer, fp32 full fine-tuning, every layer kind alike
    m = from_name(model)
    cfg = TrainConfig(model=m, cluster=parse_gpus("8xA800"), method=Method.full, precision=Precision.fp32,
                      micro_batch=1, seq_len=512, attn=Attn.eager, stage=Stage.pt)
    one = layer_training(cfg)
    assert one.one_row and not layer_training(replace(cfg, micro_batch=2)).one_row
    assert not layer_training(replace(cfg, stage=Stage.dpo)).one_row  # chosen and rejected: two rows
    rows = replace(one, one_row=False)
    per_token = [derived_layer_bytes_per_token(m, act_bytes=4, attn=Attn.eager, train=t, seq_len=512)
                 for t in (one, rows)]
    assert per_token[0] - per_token[1] == pytest.approx(one_row_minus_rows)
