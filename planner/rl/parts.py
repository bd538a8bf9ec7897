"""Online RL helpers that read a whole TrainConfig (planner.rl.settings stays below planner.strategy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from functools import lru_cache
from operator import attrgetter
from typing import Any

from planner.gpus import is_cpu
from planner.rl.settings import TRL_RL_STAGES, Generation, Rollout, is_online_rl
from planner.strategy import TrainConfig


def logprob_head_rows(cfg: TrainConfig, tokens: int) -> int:
    """Rows TRL's fused log-prob head projects in one micro-batch (trl/trainer/utils.py add_fused_lm_head): on
    Triton devices only the positions whose label is scored (GRPO / RLOO: the completion tokens), elsewhere (the
    CPU) every position; DPO's count stays every token of chosen + rejected."""
    if cfg.stage in TRL_RL_STAGES and not is_cpu(cfg.cluster.gpu):
        return cfg.micro_batch * cfg.rollout.completion_len
    return tokens


def training_part(cfg: TrainConfig) -> TrainConfig:
    """The configuration with only the rollout settings its training step reads (the completion length, for
    TRL's log-prob head): one key for every generation setting of the same strategy, so the search computes
    the training step once per strategy (planner.rl.memory / timing memoize on it). The search asks for it several
    times per candidate: made once per config, and found by the identity of the config's parts first (the search
    builds every candidate of a strategy from the same part objects, planner.rl.search.rl_plan), by their value
    when those objects are new."""
    if cfg is _LAST[0]:  # memory, resident states and time ask in a row for the same candidate
        return _LAST[1]
    others = _other_fields(cfg)
    key = (*map(id, others), cfg.rollout.completion_len)
    hit = _PART_BY_IDENTITY.get(key)
    if hit is None:
        if len(_PART_BY_IDENTITY) >= 8192:
            _PART_BY_IDENTITY.clear()
        hit = _PART_BY_IDENTITY[key] = (others, _part(cfg))  # the entry holds the parts: their ids stay theirs
    _LAST[:] = [cfg, hit[1]]
    return hit[1]


_LAST: list = [None, None]
_PART_BY_IDENTITY: dict[tuple, tuple[tuple, TrainConfig]] = {}


def memo_by_parts(store: dict, objects: tuple, values: tuple, compute: Callable[[], Any]) -> Any:
    """`compute()`, memoized in `store` on the identity of `objects` (a config's parts: its model, cluster,
    rollout...) and on `values` (plain numbers and enum members). Hashing a config's parts by value on every
    candidate costs more than most of the work memoized (a GPU's spec hashes every field it has); the entry holds
    the objects, so no other object takes their ids while it lives. Each caller's key names every config field its
    computation reads (tests/planner/test_search_exact.py checks the results against a fresh computation)."""
    key = (*map(id, objects), *values)
    hit = store.get(key)
    if hit is None:
        if len(store) >= 8192:
            store.clear()
        hit = store[key] = (objects, compute())
    return hit[1]


def _part(cfg: TrainConfig) -> TrainConfig:
    """One object per training part (`training_memo` finds its results by identity)."""
    plain = _plain_rollout(cfg.rollout.completion_len)
    key = (*_other_fields(cfg), plain)  # every field but the rollout, which the part replaces
    part = _TRAINING_PARTS.get(key)
    if part is None:
        if len(_TRAINING_PARTS) >= 8192:
            _TRAINING_PARTS.clear()
        plain_already = cfg.rollout.generation is Generation.transformers and cfg.rollout == plain
        part = _TRAINING_PARTS[key] = cfg if plain_already else replace(cfg, rollout=plain)
    return part


def training_memo(cached: Callable[..., Any], fn: Callable[..., Any], part: TrainConfig, *args: Any) -> Any:
    """`cached(fn, part, *args)` (an lru_cache keyed on the config's value), found first by the part's identity:
    `training_part` hands out one object per part, and hashing a whole config for every candidate costs more than
    the lookup saves. The entry holds the part, so its id is not reused while the entry lives."""
    key = (fn, id(part), *args)
    hit = _BY_IDENTITY.get(key)
    if hit is None or hit[0] is not part:
        if len(_BY_IDENTITY) >= 8192:
            _BY_IDENTITY.clear()
        hit = _BY_IDENTITY[key] = (part, cached(fn, part, *args))
    return hit[1]


_BY_IDENTITY: dict[tuple, tuple[TrainConfig, Any]] = {}


_TRAINING_PARTS: dict[tuple, TrainConfig] = {}
_other_fields = attrgetter(*(f.name for f in fields(TrainConfig) if f.name != "rollout"))


@lru_cache(maxsize=64)
def _plain_rollout(completion_len: int) -> Rollout:
    return Rollout(completion_len=completion_len)


def plan_group(cfg: TrainConfig) -> tuple:
    """How answers group plans for their best-N lists: by method, and for online RL by generation engine too (so
    transformers' generate, vLLM colocated and a vLLM server each show their best)."""
    if is_online_rl(cfg.stage):
        return (cfg.method, cfg.rollout.generation)
    return (cfg.method,)
