"""What each rank holds of the model: parameter bytes per rank, split into weights a parallel engine sharded (a
local shape smaller than the full one: AutoTP's column/row shards) and weights every rank keeps whole, gathered
from all ranks for run_summary.json. Pipeline stages report the same per-rank figure for their own layers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True, slots=True)
class RankParameters:
    """One rank's parameters, in bytes of their storage dtype."""

    total_bytes: int
    sharded_bytes: int  # parameters whose local tensor is a slice of the full one
    sharded_full_bytes: int  # the same parameters at their full size
    sharded_count: int


def full_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, taken before an engine shards the model (the names AutoTP keeps)."""
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _clean(name: str) -> str:
    # DeepSpeed's engine and DDP prefix "module."; AutoTP keeps the Hugging Face module path
    return name.removeprefix("module.")


def _local(p: Any) -> Any:
    """The tensor this rank stores: a DTensor's local shard (FSDP2, tp_plan), ZeRO-3's partition, else itself."""
    if hasattr(p, "to_local"):
        return p.to_local()
    return getattr(p, "ds_tensor", p)


def rank_parameters(model: Any, shapes: dict[str, tuple[int, ...]]) -> RankParameters:
    total = sharded = sharded_full = count = 0
    for name, p in model.named_parameters():
        local = _local(p)
        nbytes = local.numel() * local.element_size()
        total += nbytes
        full = shapes.get(_clean(name))
        n_full = math.prod(full) if full is not None else local.numel()
        if local.numel() < n_full:
            sharded += nbytes
            sharded_full += n_full * local.element_size()
            count += 1
    return RankParameters(total_bytes=total, sharded_bytes=sharded, sharded_full_bytes=sharded_full,
                          sharded_count=count)


def gather_rank_parameters(mine: RankParameters) -> list[dict[str, int]]:
    """Every rank's figures, in rank order (one all_gather_object; a single process returns its own)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [asdict(mine)]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, asdict(mine))
    return out


def summary_fields(per_rank: list[dict[str, int]], unsharded_bytes: int) -> dict[str, Any]:
    """run_summary.json keys: the model's bytes unsharded and what every rank holds."""
    return {"parameter_bytes": unsharded_bytes,
            "rank_parameter_bytes": [r["total_bytes"] for r in per_rank],
            "rank_sharded_parameter_bytes": [r["sharded_bytes"] for r in per_rank],
            "sharded_parameter_full_bytes": per_rank[0]["sharded_full_bytes"] if per_rank else 0,
            "sharded_parameter_count": per_rank[0]["sharded_count"] if per_rank else 0}
