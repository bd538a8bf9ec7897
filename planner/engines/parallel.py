"""Tensor parallelism (Megatron-style column/row splits, DeepSpeed AutoTP) and pipeline parallelism
(DeepSpeed's pipeline engine, 1F1B or interleaved): what they allow, and how many micro-batches a
pipeline stage keeps in flight (Korthikanti et al. 2022, Sec. 4.2.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner import parallel_comm as pc
from planner.choices import GradCkpt, PipeSchedule, Precision
from planner.compute import tokens_per_sample
from planner.pipeline import boundary_activation_bytes, p2p_messages_per_step

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
    if cfg.ep > 1:
        from planner.moe import ep_problems

        out += ep_problems(cfg)
    return out


def micro_batches_in_flight(cfg: TrainConfig, *, first: bool) -> float:
    """1F1B: stage 0 holds p micro-batches; interleaving adds (p-1)/(p v) (Korthikanti et al. 2022, Sec. 4.2.3)."""
    in_flight = 1.0
    if cfg.pp > 1 and first:
        in_flight = float(min(cfg.pp, cfg.grad_accum))
        if cfg.pp_schedule is PipeSchedule.interleaved and cfg.virtual_stages > 1:
            in_flight *= 1 + (cfg.pp - 1) / (cfg.pp * cfg.virtual_stages)
    return in_flight


def tp_comm_s(cfg: TrainConfig, *, stage_layers: int, comm_eff: float) -> float:
    """Tensor-parallel all-reduces (or SP's all-gather / reduce-scatter pairs) per step, inside a node."""
    if cfg.tp <= 1:
        return 0.0
    s = cfg.seq_len
    act_bytes = 4 if cfg.precision is Precision.fp32 else 2
    tp_group = pc.intra_node_group(cfg.cluster, cfg.tp, comm_eff)
    return cfg.grad_accum * pc.tp_time_per_micro_batch_s(
        b=cfg.micro_batch * tokens_per_sample(cfg) // s, s=s, h=cfg.model.hidden_size, act_bytes=act_bytes,
        layers=stage_layers, t=cfg.tp, recompute_forward=cfg.grad_ckpt is GradCkpt.full, g=tp_group)


def pp_comm_s(cfg: TrainConfig, *, comm_eff: float) -> float:
    """Pipeline point-to-point sends of boundary activations (and their gradients) per step."""
    if cfg.pp <= 1:
        return 0.0
    act_bytes = 4 if cfg.precision is Precision.fp32 else 2
    # with sequence parallelism the boundary tensor is already split along s over the TP ranks, so
    # each rank sends 1/t of it (Korthikanti et al. 2022, Sec. 4.2.2)
    msg = boundary_activation_bytes(cfg.micro_batch, tokens_per_sample(cfg), cfg.model.hidden_size, act_bytes,
                                    t=cfg.tp, scatter_gather=cfg.sequence_parallel)
    return p2p_messages_per_step(cfg.pp, cfg.grad_accum, cfg.pp_schedule, cfg.virtual_stages) * \
        pc.pp_time_per_message_s(msg, cfg.cluster, cfg.tp, cfg.pp, comm_eff)
