"""DeepSpeed ZeRO-3's optimizer construction and first step replayed through the caching allocator
(planner.zero3_init_allocations): hand-derived block layouts, the order and sizes DeepSpeed 0.19.8 allocates on the CPU,
the sub-groups, and the floor the replay puts under the reserved and device readings (planner.memory)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from planner import allocator, caching_allocator, deepspeed_sizes, zero3_init_allocations
from planner.build import build_config
from planner.engines import zero as zero_engine
from planner.gpus import parse_gpus
from planner.memory import memory_per_gpu, stage_params
from planner.models import spec_from_hf_config
from planner.strategy import Method, Offload, TrainConfig

MiB = 2**20
U = 2**20  # elements: the hand-derived examples count in Mi elements, so that 16-bit sizes are whole MiB
REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "validation" / "zero3_init_probe.py"
# Qwen/Qwen-7B config.json, as tests/validation/published_peaks.py reads it (w1 / w2 of 22016 / 2)
QWEN7B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 11008,
          "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
          "max_position_embeddings": 8192, "tie_word_embeddings": False}


def qwen7b_full(gpus: str = "2xA100-80G", **kw: object) -> TrainConfig:
    """Qwen's finetune_ds.sh run: its ds_config's optimizer section makes DeepSpeed's FusedAdam (in place)."""
    cfg = build_config(model="qwen2.5-7b", gpus=gpus, method=Method.full, zero=3, check=False, fused_adamw=True, **kw)
    return replace(cfg, model=spec_from_hf_config(QWEN7B, name="qwen-7B"))


def trained(cfg: TrainConfig) -> float:
    return stage_params(cfg, first=True).trainable


def _replay(version: str) -> caching_allocator.Replay:
    """Two sub-groups of 64 Mi and 48 Mi elements, bf16, Adam, a 4 Mi-element bucket, a 16 Mi-element largest
    gradient partition."""
    return zero3_init_allocations.init_and_step_replay(
        sub_groups=(64 * U, 48 * U), c16=2, state_bytes=(4.0, 4.0), bucket=4 * U, largest_partition=16 * U,
        version=version)


def test_deepspeed_0_12_layout_by_hand() -> None:
    """DeepSpeed 0.12.3, in MiB (segments: A, B, ...; every size a multiple of 2 MiB, so each request that makes a
    segment makes one of its own size). 16-bit partitions 224: A. Sub-group 0: clone 128 (B), master 256 (C), clone
    freed. Sub-group 1: clone 96 from B (split: 32 left), master 192 (D), clone freed (B whole again). gradient_buffer
    256 (E, nothing free is as large); Adam's states at construction: 256, 256, 192, 192 (F, G, H, I); the buffer
    freed. ipg bucket 8 from B (120 left); gradient partitions 224 from E (32 left). The step: fp64 norm copy 128,
    larger than B's 120: J, freed. Sub-group 0: flat 128 takes J, fp32 256 makes K. Sub-group 1: flat 96 from B's 120,
    fp32 192 from K. Reserved 2,336; allocated peak at sub-group 0's fp32: 224 + 448 + 896 + 8 + 224 + 128 + 256 =
    2,184; free at the peak: 152."""
    r = _replay("0.12.3")
    assert (r.peak_reserved_bytes, r.peak_allocated_bytes, r.reserve_bytes) == (2336 * MiB, 2184 * MiB, 152 * MiB)


def test_deepspeed_0_19_layout_by_hand() -> None:
    """DeepSpeed 0.19.8, in MiB. 16-bit partitions 224: A. Sub-group 0: converted 256 (B), master 256 (C). Sub-group
    1: converted 192 (D), sub-group 0's converted freed (B), master 192 from B (64 left); its converted freed at the
    end (D free). gradient_buffer 256 (E), freed; no state yet. ipg bucket 8 from B's 64; gradient partitions 224
    from E (32 left). The step: norm copy 128 from D, freed. Sub-group 0: flat 128 from D, fp32 256 (F), flat freed,
    Adam's states 256 (G) and 256 (H), fp32 freed. Sub-group 1: flat 96 from D, fp32 192 from F, flat freed, states
    192 from D and 192 (I). Reserved 2,144; allocated peak at sub-group 1's second state: 224 + 448 + 8 + 224 + 512 +
    192 + 384 = 1,992; free at the peak: 152."""
    r = _replay("0.19.8")
    assert (r.peak_reserved_bytes, r.peak_allocated_bytes, r.reserve_bytes) == (2144 * MiB, 1992 * MiB, 152 * MiB)


def test_releases_between_make_the_states_in_the_step_from_a_16_bit_clone() -> None:
    """0.13.2-0.18.2: the 16-bit clone of 0.12 and the lazy states of 0.19 (PR 5104, PR 7700)."""
    events = zero3_init_allocations.init_and_step_events(
        sub_groups=(10, 20), c16=2, state_bytes=(4.0, 4.0), bucket=1, largest_partition=0, version="0.16.9")
    names = [e[1] for e in events if e[0] == "alloc"]
    assert names[:3] == ["16-bit partitions", "16-bit clone", "fp32 master 0"]
    assert names.index("gradient_buffer") < names.index("ipg bucket") < names.index("state 0 of 0")


def test_a_foreach_client_holds_a_sub_group_sized_temporary_after_the_states() -> None:
    """The client's foreach AdamW (a GPU plan without --fused-adamw) holds `exp_avg_sq_sqrt`, 4 S, after the lazy states
    and before the fp32 gradient goes; FusedAdam and torch's fused kernel (temporaries 0) hold none."""
    kw = dict(sub_groups=(10, 20), c16=2, state_bytes=(4.0, 4.0), bucket=1, largest_partition=0, version="0.19.8")
    events = zero3_init_allocations.init_and_step_events(**kw, temporaries=1.0)
    step = [e for e in events if e[1] in ("AdamW temporaries", "fp32 gradients", "state 1 of 1")]
    assert step[-4:] == [("alloc", "state 1 of 1", 80), ("alloc", "AdamW temporaries", 80),
                         ("free", "AdamW temporaries"), ("free", "fp32 gradients")]
    assert not any(e[1] == "AdamW temporaries" for e in zero3_init_allocations.init_and_step_events(**kw))


@pytest.mark.slow
def test_deepspeed_0_19_allocates_in_this_order_on_the_cpu() -> None:
    """DeepSpeed 0.19.8 on the CPU accelerator (zero3_init_probe.py: world size 1, bf16, three sub-groups, SGD with
    momentum, whose one state the first step makes from the gradient): every storage of at least 5 MB that
    `deepspeed.initialize` and the first `step` make and free, in order and size, is the replay's event of that size."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(PROBE)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["version"] == "0.19.8"

    def sized(events: list, min_bytes: int) -> list[tuple[str, int]]:
        size: dict[str, int] = {}
        out = []
        for e in events:
            if e[0] == "alloc":
                size[e[1]] = e[2]
            if size[e[1]] >= min_bytes:
                out.append((e[0], size[e[1]]))
        return out

    measured = sized(got["init"] + got["step"], 5_000_000)
    planned = sized(zero3_init_allocations.init_and_step_events(
        sub_groups=tuple(got["sub_groups"]), c16=2, state_bytes=(4.0,), bucket=got["reduce_bucket"],
        largest_partition=got["largest_partition"], version=got["version"]), 5_000_000)
    print(f"[zero3 init] {len(measured)} allocations and frees of 5 MB or more, sub-groups {got['sub_groups']}")
    assert measured == planned


def test_sub_groups_of_qwen_7b_on_2_gpus_by_hand() -> None:
    """Qwen-7B's matrices per rank (n = 2): the embedding 151936 x 4096 / 2 = 311.16M, a layer (q, k, v, o: 4096^2;
    gate, up, down: 4096 x 11008) 101.19M. Sub-groups close at 1e9: the embedding + 7 layers, 10 layers, 10 layers,
    then the last 5 layers + the LM head; the norms and biases make the last."""
    cfg = qwen7b_full()
    emb, layer = math.ceil(151936 * 4096 / 2), 4 * math.ceil(4096 * 4096 / 2) + 3 * math.ceil(4096 * 11008 / 2)
    groups = zero_engine.zero3_sub_group_elements(cfg, trained(cfg), 2)
    assert groups[:4] == (emb + 7 * layer, 10 * layer, 10 * layer, 5 * layer + emb)
    assert len(groups) == 5 and groups[4] < 1e6


def test_reserved_reading_holds_the_replays_free_blocks() -> None:
    """Qwen-7B full on 2 A100s under DeepSpeed 0.12.3: the optimizer step's peak reads at least its tensors plus the
    replay's free blocks (3.77 GiB: the 4 GiB gradient_buffer stays cached where the 7.7 GB gradient partitions do not
    fit it); the allocated reading does not move."""
    cfg = qwen7b_full(seq_len=256)
    with deepspeed_sizes.configured(release="0.12.3"):
        mem = memory_per_gpu(cfg)
        groups = allocator.zero3_sub_groups(cfg, trained(cfg), 2)
        floor = allocator.zero3_optimizer_replay(cfg, groups, 2).reserve_bytes
    assert mem.phase == "optimizer"
    assert floor == pytest.approx(3.77 * 2**30, rel=0.01)
    assert mem.reserved - mem.allocated == pytest.approx(floor, rel=1e-9)


@pytest.mark.parametrize("change", ["zero2", "offload", "cpu"])
def test_no_replay_without_zero3_on_a_gpu(change: str) -> None:
    cfg = {"zero2": lambda: build_config(model="qwen2.5-7b", gpus="2xA100-80G", method=Method.full, zero=2),
           "offload": lambda: build_config(model="qwen2.5-7b", gpus="2xA100-80G", method=Method.full, zero=3,
                                           offload=Offload.optimizer),
           "cpu": lambda: replace(qwen7b_full(), cluster=parse_gpus("2xCPU"))}[change]()
    assert allocator.zero3_sub_groups(cfg, 7e9, 2) == ()
    assert allocator.zero3_optimizer_replay(cfg, (), 2) is None


def _zero_init_construction_and_loading(h: int, ff: int, layers: int, vocab: int, n: int) -> caching_allocator.Replay:
    """Qwen's blocks built under zero.Init on one of n ranks (partition_parameters.py `_post_init_method` ->
    `_partition_param`: each weight made whole, its partition allocated and copied, the whole weight freed), then
    loaded by transformers (each module's parameters gathered whole, `GatheredParameters(modifier_rank=0)`, and
    freed), then the defragmentation's `empty_cache`: the reserved bytes beyond the partitions."""
    alloc = caching_allocator.CachingAllocator()
    modules = [[vocab * h]] + [[h], [3 * h * h, 3 * h], [h * h], [h], [ff * h], [ff * h], [ff * h]] * layers + \
        [[h], [vocab * h]]
    for params in modules:
        whole = [alloc.malloc(2 * p) for p in params]
        for addr, p in zip(whole, params, strict=True):
            alloc.malloc(2 * math.ceil(p / n))
            alloc.free(addr)
    for params in modules:
        alloc.free(alloc.malloc(2 * math.ceil(sum(params) / n) * n))
    alloc.release_cached()
    return caching_allocator.Replay(alloc.allocated_bytes, alloc.reserved_bytes)


def test_qwen_72b_zero_init_leaves_no_cache() -> None:
    """A lead for the Qwen-72B LoRA + ZeRO-3 rows (tests/validation/test_memory_published_peaks.py), ruled out:
    building and loading Qwen-72B under zero.Init on 4 ranks leaves 0.01 GiB free in segments that hold partitions once
    the optimizer's defragmentation empties the cache, not the ~7.5 GiB the rows sit above ftplan."""
    r = _zero_init_construction_and_loading(8192, 24576, 80, 152064, 4)
    print(f"[zero3 init] Qwen-72B under zero.Init: {r.reserve_bytes / 2**30:.3f} GiB cached beside "
          f"{r.peak_allocated_bytes / 2**30:.2f} GiB of partitions")
    assert r.reserve_bytes < 0.05 * 2**30
