"""The online RL stages' memory readings carry what the training step's readings carry (planner/rl/memory.py
`_combine`, with planner/memory.py `_peak`'s rules): FSDP1's init floor under the reserved reading (planner/
init_allocations.py reserved_floor_bytes) and ZeRO-3's replayed optimizer construction (planner/
zero3_init_allocations.py, through the step's reserve), on a GPU, capped by what the card has left; and the RL memos
key on the DeepSpeed sizes a `deepspeed_sizes.configured` block sets, as planner.memory's strategy parts do."""

from __future__ import annotations

from dataclasses import replace

import pytest
from planner_caches import clear_lru_caches

from planner import deepspeed_sizes, memory
from planner.build import build_config
from planner.init_allocations import reserved_floor_bytes
from planner.rl import memory as rl_memory
from planner.rl import parts as rl_parts
from planner.rl.parts import training_part
from planner.strategy import FsdpStrategy, GradCkpt, Method, Stage

GiB = 2**30


def _grpo(**kw):
    base = {"model": "llama-3.1-8b", "gpus": "8xH100", "stage": Stage.grpo, "micro_batch": 1, "grad_accum": 2,
            "seq_len": 1024, "grad_ckpt": GradCkpt.full}
    return build_config(**{**base, **kw})


def _fsdp1_lora(**kw):
    return _grpo(method=Method.lora, fsdp=FsdpStrategy.full_shard, fsdp_version=1, **kw)


def _zero3_full(**kw):
    return _grpo(method=Method.full, zero=3, **kw)


def _step(cfg):
    """The policy's training step alone, read with the SFT rules (planner.memory._peak)."""
    return memory.training_memory_per_gpu(training_part(cfg))


def test_fsdp1_lora_keeps_the_init_floor_under_the_reserved_reading() -> None:
    cfg = _fsdp1_lora()
    step, rl = _step(cfg), memory.memory_per_gpu(cfg)
    floor = reserved_floor_bytes(cfg)
    assert floor > 0 and step.reserved_floor == floor
    # the floor binds this step (its own reserve is below it), so the RL reading had lost it before
    assert step.reserved == pytest.approx(floor) and step.allocated + step.reserve_wanted < floor
    assert rl.reserved >= step.reserved and rl.reserved >= floor
    assert rl.reserve_wanted == step.reserve_wanted  # the fit keeps the step's own reserve, as for SFT
    # the floor is in the reserved and device readings only: the allocated one and the fit's bytes do not move
    assert rl.allocated == step.allocated + sum(v for k, v in rl.other_items.items()
                                                if k in ("buffered generations", "reward model", "reference model"))


def test_fsdp1_floor_carries_onto_ppo_and_a_generation_peak() -> None:
    ppo = _fsdp1_lora(stage=Stage.ppo)
    assert memory.memory_per_gpu(ppo).reserved >= reserved_floor_bytes(ppo)
    # transformers' generate over a long completion batch: the generation phase peaks, the floor still holds
    gen = _fsdp1_lora(micro_batch=8, grad_accum=8, seq_len=4096, completion_len=2048)
    mem = memory.memory_per_gpu(gen)
    assert mem.phase == "generation"
    assert mem.reserved >= max(reserved_floor_bytes(gen), _step(gen).reserved)


@pytest.mark.parametrize(("kw", "phase"), [({"micro_batch": 4, "grad_ckpt": GradCkpt.none}, "backward"),
                                           ({"micro_batch": 8, "grad_accum": 8, "seq_len": 4096,
                                             "completion_len": 2048}, "generation")],
                         ids=["training-peak", "generation-peak"])
def test_zero3_full_keeps_the_replayed_construction(kw: dict, phase: str) -> None:
    """The step's reserve (`reserve_wanted`) holds ZeRO-3's raise (_peak: at least the optimizer phase's tensors plus
    the free part of the construction's segments, less the peak's tensors); the RL peak keeps that reserve on top of
    tensors at least the step's, so the absolute floor survives on the training peak and on a larger generation
    peak alike."""
    cfg = _zero3_full(**kw)
    step, rl = _step(cfg), memory.memory_per_gpu(cfg)
    parts = memory._strategy_parts(training_part(cfg), first=True)
    assert parts.zero3_free is not None and parts.zero3_free > 0
    assert rl.phase == phase and rl.allocated >= step.allocated
    assert rl.reserved >= step.reserved
    assert rl.reserved - rl.allocated == pytest.approx(step.reserve_wanted)  # the card has room for it here
    assert rl.reserve_wanted == step.reserve_wanted


def test_the_card_caps_the_carried_floor() -> None:
    # Llama-3.1-70B LoRA on 16 A10G (22.5 GiB): the init floor (28.3 GiB) is more than the card; the reserve stops at
    # what the card has left beside the CUDA context and NCCL's buffers, as the step's own reading does
    cfg = _fsdp1_lora(model="llama-3.1-70b", gpus="2x8xA10G")
    rl, step = memory.memory_per_gpu(cfg), _step(cfg)
    hbm = cfg.cluster.gpu.hbm_bytes
    outside = rl.other_items["CUDA context and workspaces"] + rl.other_items["NCCL communicator buffers"]
    assert reserved_floor_bytes(cfg) > hbm
    assert rl.reserved == pytest.approx(hbm - outside) and rl.total == pytest.approx(hbm)
    assert rl.reserved == pytest.approx(step.reserved)


def test_no_floor_off_the_gpu() -> None:
    cfg = _fsdp1_lora(model="qwen3-0.6b", gpus="2xCPU", seq_len=256, completion_len=64, num_generations=2)
    assert _step(cfg).reserved_floor == 0.0
    assert memory.memory_per_gpu(cfg).other_items["allocator reserve"] == 0.0


def _clear() -> None:
    clear_lru_caches()
    for memo in (memory._STRATEGY_PARTS, memory._ACTIVATIONS, rl_memory._RL_PARTS, rl_memory._RESIDENT,
                 rl_memory._TRAINING_OF, rl_memory._KEPT, rl_parts._PART_BY_IDENTITY, rl_parts._BY_IDENTITY,
                 rl_parts._TRAINING_PARTS):
        memo.clear()
    rl_parts._LAST[:] = [None, None]


def test_a_configured_block_changes_the_rl_estimate_that_reads_its_sizes() -> None:
    """ZeRO-3's buffers (the reduce bucket) and its replayed construction read deepspeed_sizes; the RL memos (the
    training step, the trainer's resident states) key on deepspeed_sizes.configuration() as planner.memory does."""
    cfg = _zero3_full()
    before = memory.memory_per_gpu(cfg)
    states_before = rl_memory.resident_states(memory._TRAINING, cfg)
    sizes = {"reduce_bucket": 5e8, "prefetch_bucket": 5e8, "persistence_threshold": 1e6}
    with deepspeed_sizes.configured(**sizes):
        inside = memory.memory_per_gpu(cfg)
        states_inside = rl_memory.resident_states(memory._TRAINING, cfg)
        _clear()
        fresh = memory.memory_per_gpu(cfg)
        states_fresh = rl_memory.resident_states(memory._TRAINING, cfg)
    # the reduce bucket is a resident buffer and a step tensor: the allocated reading and the reserve move
    assert inside.allocated != before.allocated and states_inside != states_before
    assert inside.reserve_wanted != before.reserve_wanted
    assert (inside.total, inside.reserved, inside.allocated, inside.reserve_wanted) == \
        (fresh.total, fresh.reserved, fresh.allocated, fresh.reserve_wanted)
    assert states_inside == states_fresh
    after = memory.memory_per_gpu(replace(cfg))  # outside the block: the default sizes again
    assert (after.allocated, after.reserved, after.reserve_wanted) == \
        (before.allocated, before.reserved, before.reserve_wanted)


def test_a_configured_block_changes_the_rl_step_time_that_reads_its_sizes() -> None:
    """ZeRO's collectives read deepspeed_sizes (planner/engines/zero.py: the reduce bucket sets how many
    reduce-scatters a step issues, each with its latency); the RL
    step time's training-step memo keys on deepspeed_sizes.configuration(), so a `configured` block is not answered
    from a memo filled outside it."""
    from planner.timing import step_time

    cfg = _zero3_full()
    before = step_time(cfg).step_time_s
    with deepspeed_sizes.configured(reduce_bucket=5e5):
        inside = step_time(cfg).step_time_s
        _clear()
        clear_lru_caches()
        fresh = step_time(cfg).step_time_s
    assert inside != before and inside == fresh
    assert step_time(replace(cfg)).step_time_s == before
