"""Tensor parallelism (Megatron-style column/row splits, DeepSpeed AutoTP) and pipeline parallelism
(DeepSpeed's pipeline engine, 1F1B or interleaved): what they allow, and how many micro-batches a
pipeline stage keeps in flight (Korthikanti et al. 2022, Sec. 4.2.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner.choices import PipeSchedule

if TYPE_CHECKING:
    from planner.strategy import TrainConfig


def problems(cfg: TrainConfig) -> list[str]:
    m, out = cfg.model, cfg.layout.problems(cfg.world_size)
    if m.num_heads % cfg.tp or m.num_kv_heads % cfg.tp:
        out.append(f"TP({cfg.tp}) must divide the attention heads ({m.num_heads}) and KV heads "
                   f"({m.num_kv_heads}) of {m.name}")
    if cfg.tp > cfg.cluster.gpus_per_node:
        out.append(f"TP({cfg.tp}) spans nodes; keep TP within one node of {cfg.cluster.gpus_per_node} GPUs")
    if cfg.pp > m.num_layers:
        out.append(f"PP({cfg.pp}) exceeds the {m.num_layers} layers of {m.name}")
    if cfg.virtual_stages > 1 and (cfg.pp_schedule is not PipeSchedule.interleaved or
                                   m.num_layers % (cfg.pp * cfg.virtual_stages)):
        out.append(f"interleaved schedule needs layers ({m.num_layers}) divisible by PP x virtual stages")
    if cfg.sequence_parallel and cfg.tp == 1:
        out.append("sequence parallelism needs TP > 1")
    return out


def micro_batches_in_flight(cfg: TrainConfig, *, first: bool) -> float:
    """1F1B: stage 0 holds p micro-batches; interleaving adds (p-1)/(p v) (Korthikanti et al. 2022, Sec. 4.2.3)."""
    in_flight = 1.0
    if cfg.pp > 1 and first:
        in_flight = float(min(cfg.pp, cfg.grad_accum))
        if cfg.pp_schedule is PipeSchedule.interleaved and cfg.virtual_stages > 1:
            in_flight *= 1 + (cfg.pp - 1) / (cfg.pp * cfg.virtual_stages)
    return in_flight
