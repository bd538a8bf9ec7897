"""The generation settings an online RL plan searches beside the training strategy: where completions are
generated (transformers' generate, vLLM colocated, a vLLM server on some of the GPUs), vLLM's memory share and
sleep mode, the vLLM server's GPUs and tensor parallelism, and how many optimizer steps one generation feeds.
What the user fixed (`RolloutSpace` from their options) is never changed.

vLLM's memory share is chosen per training candidate rather than enumerated: the smallest multiple of 0.05 whose
KV cache holds the engine's whole batch at full length (more only reserves memory decoding cannot use), or, when
the training step leaves less, the largest share that still fits beside it (fewer sequences decode at once).
The global batch is fixed for the whole cluster (8 completions per GPU by default), so a server's GPUs come out
of the training GPUs: every plan uses the same GPUs and their tokens/s compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any

from planner.calibration import DEFAULT, Calibration
from planner.errors import PlanError
from planner.estimate import Estimate, FitKind, Limits, estimate, fit_reason
from planner.gpus import Cluster, is_cpu
from planner.rl import generation as gen
from planner.rl.parts import memo_by_parts
from planner.rl.settings import Generation, Rollout, RolloutSpace
from planner.strategy import TrainConfig

MEMORY_STEP = 0.05  # vLLM's share is searched on this grid
MAX_MEMORY = 0.95


@dataclass(frozen=True, slots=True)
class SearchParts:
    """What planner.search hands in (it imports this module, so this one does not import it)."""

    candidates: Callable[..., Iterator[TrainConfig]]
    default_global_batch: Callable[[TrainConfig], int]
    rank_key: Callable[[Estimate], Any]
    resolve_ties: Callable[..., list]
    simplicity_key: Callable[[TrainConfig], tuple[int, ...]]
    result: type


def _powers_of_two(limit: int) -> list[int]:
    return [1 << k for k in range(limit.bit_length()) if (1 << k) <= limit]


def training_cluster(cluster: Cluster, server_gpus: int) -> Cluster | None:
    """The GPUs left to training when a vLLM server takes `server_gpus`: part of a single node, or whole nodes."""
    if cluster.nodes == 1 and 0 < server_gpus < cluster.gpus_per_node:
        return Cluster(gpu=cluster.gpu, nodes=1, gpus_per_node=cluster.gpus_per_node - server_gpus)
    if server_gpus % cluster.gpus_per_node == 0 and 0 < server_gpus // cluster.gpus_per_node < cluster.nodes:
        return Cluster(gpu=cluster.gpu, nodes=cluster.nodes - server_gpus // cluster.gpus_per_node,
                       gpus_per_node=cluster.gpus_per_node)
    return None


def _engine_tp(cfg: TrainConfig, fixed: int | None, limit: int) -> int | None:
    """The smallest power-of-two tensor parallelism whose engine holds the weights and one sequence in
    vLLM's share (the user's, when fixed); None when none within `limit` GPUs does."""
    if fixed is not None:
        return fixed
    for tp in _powers_of_two(limit):
        probe = replace(cfg, rollout=replace(cfg.rollout, vllm_tp=tp))
        if gen.vllm_budget(probe).max_sequences >= 1:
            return tp
    return None


def variants(base: TrainConfig, space: RolloutSpace) -> Iterator[tuple[Cluster, Rollout]]:
    """(training cluster, rollout settings) pairs to plan; vLLM's share is filled in per candidate when not fixed."""
    r = base.rollout
    on_cpu = is_cpu(base.cluster.gpu)
    for g in space.generations:
        if g is not Generation.transformers and on_cpu:
            continue
        for steps in space.generation_steps:
            common = replace(r, generation=g, generation_steps=steps)
            if g is Generation.transformers:
                yield base.cluster, replace(common, vllm_sleep=False, vllm_server_gpus=0, vllm_tp=1)
            elif g is Generation.vllm_colocate:
                u = space.vllm_memory if space.vllm_memory is not None else r.vllm_memory
                probe = replace(base, rollout=replace(common, vllm_memory=MAX_MEMORY, vllm_server_gpus=0))
                tp = _engine_tp(probe, space.vllm_tp, base.cluster.gpus_per_node)
                if tp is None:
                    continue
                for sleep in space.vllm_sleep:
                    yield base.cluster, replace(common, vllm_memory=u, vllm_sleep=sleep, vllm_server_gpus=0,
                                                vllm_tp=tp)
            else:
                counts = space.vllm_server_gpus or tuple(_powers_of_two(base.world_size - 1))
                u = space.vllm_memory if space.vllm_memory is not None else gen.VLLM_SERVER_MEMORY
                for k in counts:
                    cluster = training_cluster(base.cluster, k)
                    if cluster is None:
                        continue
                    probe = replace(base, cluster=cluster, rollout=replace(common, vllm_memory=u, vllm_server_gpus=k))
                    tp = _engine_tp(probe, space.vllm_tp, min(k, base.cluster.gpus_per_node))
                    if tp is None or k % tp:
                        continue
                    yield cluster, replace(common, vllm_memory=u, vllm_sleep=False, vllm_server_gpus=k, vllm_tp=tp)


def with_memory_share(cfg: TrainConfig, share: float) -> TrainConfig:
    """`cfg` with vLLM's memory share `share`: built from its parts (the search asks several times per candidate;
    dataclasses.replace would pass every field through its checks again)."""
    return config_of(_other_values(cfg), _rollout_with_memory(cfg.rollout, share))


_OTHER_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name != "rollout")
_other_values = attrgetter(*_OTHER_FIELDS)


_MODEL, _ADAPTER, _BATCH, _ENGINE_CHOICE, _SWITCHES, _PRECISION, _OPTIMIZER, _ATTN, _STAGE = (
    _OTHER_FIELDS.index(name) for name in ("model", "adapter", "batch", "engine_choice", "switches", "precision",
                                           "optimizer", "attn", "stage"))
# the parts validity reads whole, first in TrainConfig's order (model, cluster, adapter, layout)
_VALIDITY_PARTS = _OTHER_FIELDS.index("batch")
# TrainConfig's slots (frozen: its own __setattr__ refuses, as it does for its __init__, which sets them through them)
_SET_OTHERS = tuple(getattr(TrainConfig, name).__set__ for name in _OTHER_FIELDS)
_SET_ROLLOUT = TrainConfig.rollout.__set__  # type: ignore[attr-defined]


def config_of(others: tuple, rollout: Rollout) -> TrainConfig:
    """The TrainConfig of every field but the rollout (`others`, in `_OTHER_FIELDS`' order) and `rollout`: what
    TrainConfig(**fields) makes when every part is given (its __init__ fills in only the parts left out), set field
    by field as its __init__ sets them."""
    cfg = object.__new__(TrainConfig)
    for set_field, value in zip(_SET_OTHERS, others, strict=True):
        set_field(cfg, value)
    _SET_ROLLOUT(cfg, rollout)
    return cfg


def _rollout_with_memory(rollout: Rollout, share: float) -> Rollout:
    """One Rollout object per (rollout, share), found by the rollout's identity (memos downstream key on it)."""
    return memo_by_parts(_WITH_MEMORY, (rollout,), (share,), lambda: replace(rollout, vllm_memory=share))


_WITH_MEMORY: dict[tuple, tuple[tuple, Rollout]] = {}


def needed_memory_share(cfg: TrainConfig) -> float:
    """The smallest share on the grid whose KV cache holds the engine's whole batch at once (at full length, or
    with completions stopping at EOS at a wave's peak, planner.rl.generation.wave_tokens_per_sequence)."""
    return _needed_share(cfg.model, cfg.cluster, cfg.rollout, cfg.adapter, cfg.precision, cfg.batch,
                         lambda: _needed_memory_share(cfg))


def _needed_share(model: Any, cluster: Cluster, rollout: Rollout, adapter: Any, precision: Any, batch: Any,
                  compute: Callable[[], float]) -> float:
    """`needed_memory_share`, memoized on what it reads: the model, cluster, rollout, adapter (quantization),
    precision, sequence length and the rank's generation batch (micro_batch x grad_accum)."""
    return memo_by_parts(_NEEDED, (model, cluster, rollout, adapter),
                         (precision, batch.seq_len, batch.micro_batch * batch.grad_accum), compute)


_NEEDED: dict[tuple, tuple[tuple, float]] = {}


def _needed_memory_share(cfg: TrainConfig) -> float:
    probe = gen.vllm_budget(with_memory_share(cfg, 1.0))
    kv_seq = gen.kv_bytes_per_token(cfg.model, 2.0) / cfg.rollout.vllm_tp * gen.wave_tokens_per_sequence(cfg)
    need = probe.weights + probe.activations + kv_seq * gen.engine_batch(cfg)
    share = math.ceil(need / cfg.cluster.gpu.hbm_bytes / MEMORY_STEP - 1e-9) * MEMORY_STEP
    return round(min(MAX_MEMORY, max(MEMORY_STEP, share)), 2)


def choose_memory_share(cfg: TrainConfig, limits: Limits, cal: Calibration) -> Estimate:
    """Estimate a colocated plan at the share it needs, or at the largest that fits beside its training step."""
    return _estimate_at_needed_share(with_memory_share(cfg, needed_memory_share(cfg)), limits, cal)


def _estimate_at_needed_share(cfg: TrainConfig, limits: Limits, cal: Calibration) -> Estimate:
    """`cfg` (at the share it needs) estimated, or at the largest share that fits beside its training step."""
    est = estimate(cfg, limits, cal, timed=None)
    if est.fits:
        return est
    gpu = cfg.cluster.gpu
    usable = gpu.hbm_bytes * (1 - limits.headroom_fraction)
    slack = usable - est.memory.total
    share = math.floor((cfg.rollout.vllm_memory + slack / (gpu.hbm_bytes * (1 + gpu.allocator_reserve_fraction)))
                       / MEMORY_STEP + 1e-9) * MEMORY_STEP
    share = round(share, 2)
    if share < MEMORY_STEP or share >= cfg.rollout.vllm_memory:
        return est
    smaller = with_memory_share(cfg, share)
    if gen.vllm_budget(smaller).max_sequences < 1:
        return est
    return estimate(smaller, limits, cal, timed=None)


def rl_plan(parts: SearchParts, base: TrainConfig, space: Any, limits: Limits = Limits(), cal: Calibration = DEFAULT
            ) -> Any:
    """Every training strategy (planner.search's SearchSpace, data parallel only) under every generation setting,
    ranked together by tokens/s as planner.search ranks (a PlanResult)."""
    from planner.validity import problems

    rspace = space.rollouts or RolloutSpace()
    global_batch = space.global_batch or parts.default_global_batch(base)
    strategy_space = replace(space, global_batch=global_batch, tps=(1,), pps=(1,))
    evaluated = valid = 0
    fitting: list[Estimate] = []
    rejected: dict[str, int] = {}
    seen: dict[tuple, list[str]] = {}
    # the training strategies of each training cluster, as the parts of their configs: planner.search.candidates
    # reads no rollout setting, so every generation setting on a cluster has the same strategies, in the same
    # order; built once, the same part objects serve every generation setting (memos key on their identity)
    strategies: dict[Cluster, list[tuple]] = {}
    held: list[Rollout] = []
    for cluster, rollout in variants(base, rspace):
        b = replace(base, cluster=cluster, rollout=rollout)
        if global_batch % b.world_size:
            continue
        listed = strategies.get(cluster)
        if listed is None:
            listed = strategies[cluster] = [_other_values(c) for c in parts.candidates(b, strategy_space)]
        auto = rollout.generation is Generation.vllm_colocate and rspace.vllm_memory is None
        # validity reads vLLM's share (planner.rl.validity: one sequence must fit in it); where the search chooses
        # the share, a candidate is valid if the largest share it may choose holds one, as `variants` chose the
        # engine's TP (the share itself is then chosen per candidate, and the fit decides the rest)
        checked = _rollout_with_memory(rollout, MAX_MEMORY) if auto else rollout
        held.append(checked)  # its id keys `seen` while the search runs
        setting = (id(checked), id(cluster))
        for others in listed:
            evaluated += 1
            batch = others[_BATCH]
            # what validity reads (planner.validity.problems and the engines', planner.rl.validity.rl_problems):
            # every part of the config but the batch and checkpointing; of the batch whether micro-batch and
            # accumulation are positive, the sequence length and the rank's batch (the global batch, vLLM's
            # max_num_seqs); the parts live in `strategies` for the whole search
            key = (*map(id, others[:_VALIDITY_PARTS]), id(others[_ENGINE_CHOICE]), id(others[_SWITCHES]),
                   others[_OPTIMIZER], others[_PRECISION], others[_ATTN],
                   others[_STAGE], batch.micro_batch >= 1, batch.grad_accum >= 1, batch.seq_len,
                   batch.micro_batch * batch.grad_accum, *setting)
            found = seen.get(key)
            if found is None:
                found = seen[key] = problems(config_of(others, checked))
            if found:
                rejected[found[0]] = rejected.get(found[0], 0) + 1
                continue
            valid += 1
            if auto:  # at the share it needs (choose_memory_share), the config built once at that share
                share = _needed_share(others[_MODEL], cluster, rollout, others[_ADAPTER], others[_PRECISION],
                                      others[_BATCH], lambda o=others, r=rollout: _needed_memory_share(config_of(o, r)))
                cfg = config_of(others, _rollout_with_memory(rollout, share))
                est = _estimate_at_needed_share(cfg, limits, cal)
            else:
                cfg = config_of(others, rollout)
                est = estimate(cfg, limits, cal, timed=None)
            if est.fits:
                fitting.append(est)
            else:
                first = est.fit_failures[0]
                reason = "does not fit in GPU memory" if first.kind is FitKind.gpu_memory else fit_reason(cfg, first)
                rejected[reason] = rejected.get(reason, 0) + 1
    if evaluated == 0:
        raise PlanError(f"the search space is empty: the global batch of {global_batch} completions must split "
                        "evenly over the training GPUs and hold whole groups of --num-generations")
    ordered = sorted(fitting, key=parts.rank_key)
    ranked = parts.resolve_ties(ordered, [e.time.tokens_per_s if e.time else 0.0 for e in ordered],
                                [parts.simplicity_key(e.config) + rl_simplicity_key(e.config) for e in ordered])
    return parts.result(plans=ranked, candidates_evaluated=evaluated, valid=valid, rejected=rejected)


def rl_simplicity_key(cfg: TrainConfig) -> tuple[int, ...]:
    """Ties between generation settings go to the simpler: transformers' generate (nothing to install), then
    colocated vLLM without sleep, with sleep, a server; one generation per step before several."""
    r = cfg.rollout
    kind = {Generation.transformers: 0, Generation.vllm_colocate: 1 + int(r.vllm_sleep), Generation.vllm_server: 3}
    return (kind[r.generation], r.generation_steps, r.vllm_tp)

