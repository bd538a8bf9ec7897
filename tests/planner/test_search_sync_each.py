"""`sync_each_batch` in the search (planner.search._switches): offered where sharded FSDP would keep every unsharded
gradient through the Trainer's accumulation, nowhere else, and never taken away from a user who set it."""

from __future__ import annotations

import dataclasses

from planner.build import build_config
from planner.engines import fsdp
from planner.search import SearchSpace, candidates, plan
from planner.strategy import Engine, FsdpStrategy, Method, Stage

SPACE = SearchSpace(methods=(Method.full,))


def test_offered_exactly_where_no_sync_keeps_unsharded_gradients() -> None:
    base = build_config(model="7b", gpus="8xA800", check=False)
    cfgs = list(candidates(base, SPACE))
    synced = [c for c in cfgs if c.sync_each_batch]
    assert synced
    for c in synced:
        assert c.engine is Engine.fsdp and c.fsdp is not FsdpStrategy.no_shard and c.grad_accum > 1
        assert "sync-each" in str(c)
    keys = {(str(c), c.method) for c in cfgs}
    assert len(keys) == len(cfgs)  # every variant a distinct plan
    # each one has its Trainer twin, which keeps the unsharded gradients
    twins = {str(c).removesuffix("-sync-each") for c in synced}
    assert twins <= {str(c) for c in cfgs if not c.sync_each_batch and fsdp.accumulates_unsharded_grads(c)}


def test_the_switch_trades_the_unsharded_gradients() -> None:
    base = build_config(model="7b", gpus="8xA800", check=False)
    result = plan(base, SPACE)
    by_name = {str(e.config): e for e in result.plans}
    trainer = by_name["FSDP-TP1-PP1-DP8-mb4-ga2"]
    synced = by_name["FSDP-TP1-PP1-DP8-mb4-ga2-sync-each"]
    assert synced.memory.total < trainer.memory.total


def test_a_users_switch_is_kept_and_ppo_is_not_offered_it() -> None:
    mine = build_config(model="7b", gpus="8xA800", sync_each_batch=True, check=False)
    assert all(c.sync_each_batch for c in candidates(mine, SPACE))
    ppo = build_config(model="7b", gpus="8xA800", stage=Stage.ppo, check=False)
    assert not any(c.sync_each_batch for c in candidates(ppo, SPACE))


def test_expert_parallel_accumulation_keeps_the_ranks_own_experts_unsharded() -> None:
    """With ep > 1 the Trainer's no_sync still covers every FSDP2 module, the experts' `efsdp` units too, so memory
    holds the unsharded gradients time says are reduced once per step: the rank's own experts (1/ep of them) and
    the whole of the rest, and the search offers `sync_each_batch` as it does without EP."""
    from planner.memory import memory_per_gpu
    from planner.moe import expert_params_per_layer

    base = build_config(model="qwen3-30b-a3b", gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard,
                        micro_batch=1, grad_accum=2, seq_len=1024, check=False)
    one, two = (dataclasses.replace(base, ep=ep) for ep in (1, 2))
    assert fsdp.accumulates_unsharded_grads(two)
    assert fsdp.reductions_per_step(two) == 1
    experts = expert_params_per_layer(base.model) * base.model.num_layers
    grads = {c.ep: fsdp.backward_grad_bytes(c, 3.0e10, 0.0) for c in (one, two)}
    assert grads[1] - grads[2] == experts / 2 * 2  # bf16: half the experts, 2 bytes each
    synced = dataclasses.replace(build_config(model="qwen3-30b-a3b", gpus="8xH100", method=Method.full,
                                              fsdp=FsdpStrategy.full_shard, micro_batch=1, grad_accum=2,
                                              seq_len=1024, sync_each_batch=True, check=False), ep=2)
    assert memory_per_gpu(synced).total < memory_per_gpu(two).total
    cfgs = candidates(build_config(model="qwen3-30b-a3b", gpus="8xH100", check=False), SPACE)
    assert any(c.ep > 1 and c.sync_each_batch for c in cfgs)
