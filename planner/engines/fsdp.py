"""PyTorch FSDP through accelerate's config, FSDP2 by default (FSDP1 with --fsdp-version 1): FULL_SHARD,
SHARD_GRAD_OP, and with FSDP1 HYBRID_SHARD (shard within a node, replicate across nodes) and NO_SHARD
(DDP), with CPU offload of parameters, gradients and optimizer together (torch.distributed.fsdp.CPUOffload).
One decoder layer per unit (the transformer auto-wrap policy), the embedding, final norm and head in the
root unit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner import collectives as col
from planner import parallel_comm as pc
from planner.choices import (
    Engine,
    FsdpStrategy,
    FsdpVersion,
    Method,
    Offload,
    OffloadDevice,
    Precision,
    Quant,
    ZeroStage,
)
from planner.comm import Group, allreduce_time_s, split_time_s
from planner.engines import ddp
from planner.engines.sharded import overlap_for, sharded_comm
from planner.memory_knobs import fsdp_quantized_units_bytes
from planner.params import embedding_params, head_params, layer_params
from planner.states import StageParams, compute_copy_bytes, grad_dtype_bytes, stage_layers

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

ROWS = tuple((Engine.fsdp, ZeroStage.DISABLED, strategy, offload, OffloadDevice.cpu) for strategy, offload in (
    (FsdpStrategy.full_shard, Offload.none),
    (FsdpStrategy.full_shard, Offload.all),
    (FsdpStrategy.shard_grad_op, Offload.none),
    (FsdpStrategy.hybrid_shard, Offload.none),
    (FsdpStrategy.no_shard, Offload.none),
))


def problems(cfg: TrainConfig) -> list[str]:
    out = []
    if cfg.pp > 1:
        out.append("pipeline parallelism with FSDP is not supported here (use DeepSpeed ZeRO-1 with PP)")
    if cfg.tp > 1:
        out.append("tensor parallelism with FSDP needs FSDP2 + DTensor, which accelerate's FSDP config does not "
                   "express (use DeepSpeed AutoTP with ZeRO-1/2)")
    if cfg.method is Method.qlora and cfg.quant is not Quant.nf4:
        out.append("QLoRA with FSDP needs nf4 with bnb_4bit_quant_storage (int8 cannot be sharded)")
    if cfg.fsdp_version is FsdpVersion.TWO and cfg.fsdp in (FsdpStrategy.hybrid_shard, FsdpStrategy.no_shard):
        # accelerate's FSDP2 plugin takes reshard_after_forward (a bool) only; the Trainer raises for the
        # other strategies (transformers/training_args.py, _apply_legacy_fsdp_to_config)
        out.append(f"FSDP2 shards fully or per step only; {cfg.fsdp.value} needs --fsdp-version 1")
    if cfg.fsdp is FsdpStrategy.hybrid_shard and cfg.cluster.nodes == 1:
        out.append("hybrid_shard shards within a node and replicates across nodes: it needs several nodes")
    return out


def is_sharded(cfg: TrainConfig) -> bool:
    return cfg.fsdp is not FsdpStrategy.no_shard


def shard_group(cfg: TrainConfig) -> int:
    """Ranks a sharded state is split over: the data-parallel group, or within one node for hybrid."""
    if cfg.fsdp is FsdpStrategy.hybrid_shard:
        per_node = max(1, cfg.cluster.gpus_per_node // (cfg.tp * cfg.pp))
        return min(cfg.dp, per_node)
    return cfg.dp


# --- memory -------------------------------------------------------------------------------------

weight_bytes_per_param = ddp.weight_bytes_per_param  # FSDP's MixedPrecision keeps the module's dtypes


def shards_weights(cfg: TrainConfig) -> bool:
    return cfg.fsdp in (FsdpStrategy.full_shard, FsdpStrategy.hybrid_shard)


def gradients(cfg: TrainConfig, trained: float, n: int) -> tuple[float, float]:
    """(GPU, host) bytes: sharded gradients in the parameter's dtype (on the host under CPU offload)."""
    if not is_sharded(cfg):
        return ddp.gradients(cfg, trained, n)
    grads = trained * grad_dtype_bytes(cfg.precision) / n
    if cfg.offload is Offload.all:
        return 0.0, grads
    return grads, 0.0


def grads_live_in_backward(cfg: TrainConfig) -> bool:
    """FSDP1's FlatParameter gradient shards exist when backward starts (the previous CPU profiling); FSDP2
    reduce-scatters each unit's gradients into fresh shards as backward reaches it (torch/distributed/fsdp/
    _fully_shard/_fsdp_param_group.py, post_backward), so with one micro-batch none exist yet."""
    return (is_sharded(cfg) and cfg.fsdp_version is FsdpVersion.ONE) or cfg.grad_accum > 1


def master_bytes(cfg: TrainConfig) -> float:
    return 0.0


def shards_optimizer(cfg: TrainConfig) -> bool:
    return is_sharded(cfg)


def autocast_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """NO_SHARD autocasts like DDP; the sharded strategies' MixedPrecision casts per unit instead."""
    return {} if is_sharded(cfg) else ddp.autocast_items(cfg, sp)


def buffers(cfg: TrainConfig, sp: StageParams, trained: float, *, first: bool,
            sixteen_bit_weights: float = 0.0) -> dict[str, float]:
    if not is_sharded(cfg):
        return {}
    m, c16 = cfg.model, compute_copy_bytes(cfg.precision)
    layer16 = c16 * layer_params(m) / cfg.tp
    items = {}
    if cfg.fsdp is FsdpStrategy.shard_grad_op:
        items["FSDP unsharded parameters"] = sixteen_bit_weights
    elif cfg.quant is not Quant.none:
        items["FSDP unsharded parameters"] = fsdp_quantized_units_bytes(cfg, c16)
    else:
        # the unit running plus the one prefetched (BACKWARD_PRE), and the root unit (embedding,
        # final norm, head), which FSDP does not reshard between forward and backward
        root = (embedding_params(m) + head_params(m)) / cfg.tp
        items["FSDP unsharded parameters"] = 2 * layer16 + c16 * root
    # one unit's unsharded gradients, and the root unit's LM-head gradient: it is computed first in
    # backward and reduce-scattered only with the root's other gradients (the embedding's) at its end
    items["FSDP unsharded gradients"] = (layer16 + (c16 * head_params(m) / cfg.tp
                                                    if cfg.method is Method.full and sp.has_head else 0.0)
                                         if sp.trainable else 0.0)
    return items


def step_items(cfg: TrainConfig, trained: float, n: int, state_bytes: float) -> dict[str, float]:
    return ddp.adamw_foreach_items(cfg, trained, state_bytes, n if is_sharded(cfg) else 1)


# --- time ---------------------------------------------------------------------------------------

def optimizer_shards(cfg: TrainConfig) -> int:
    return shard_group(cfg) if is_sharded(cfg) else 1


gradient_offloads_per_step = ddp.gradient_offloads_per_step  # every micro-batch


def dp_comm(cfg: TrainConfig, g: Group, trainable_gpu: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
            comm_eff: float) -> tuple[float, float, float]:
    """(total, exposed) data-parallel seconds per step, and host-link seconds of CPU offload; one
    all-gather and one reduce-scatter per unit (planner/collectives.py)."""
    # MixedPrecision reduces in 16 bits
    grad_bytes = trainable_gpu * (4.0 if cfg.precision is Precision.fp32 else 2.0)
    if cfg.fsdp is FsdpStrategy.no_shard:
        return ddp.bucketed_allreduce(cfg, g, grad_bytes, bwd_s)
    units = col.fsdp_units(stage_layers(cfg.model.num_layers, cfg.pp))
    if cfg.fsdp is FsdpStrategy.hybrid_shard:
        shard = g.per_node
        intra = pc.intra_node_group(cfg.cluster, shard, comm_eff)
        total, exposed, h2d = sharded_comm(cfg, intra, grad_bytes, param_bytes_gpu, fwd_s, bwd_s, units, units,
                                           gathers=2)
        replicas = Group(n=cfg.dp // shard, per_node=1, intra_bytes_per_s=g.intra_bytes_per_s,
                         inter_bytes_per_s=g.inter_bytes_per_s)
        ar = cfg.grad_accum * split_time_s(allreduce_time_s, grad_bytes / shard, units, replicas)
        return total + ar, exposed + overlap_for(cfg)(ar, cfg.grad_accum * bwd_s, ar / (cfg.grad_accum * units)), h2d
    gathers = 1 if cfg.fsdp is FsdpStrategy.shard_grad_op else 2
    return sharded_comm(cfg, g, grad_bytes, param_bytes_gpu, fwd_s, bwd_s, units, units, gathers=gathers)


def hook_host_s(cfg: TrainConfig, layers: int) -> float:
    """Per micro-batch: host work of FSDP's unit hooks (planner/collectives.py)."""
    if not is_sharded(cfg):
        return 0.0
    gpu = cfg.cluster.gpu
    per = gpu.fsdp_unit_host_s if gpu.fsdp_unit_host_s is not None else col.FSDP_UNIT_HOST_OPS * gpu.host_op_s
    return col.fsdp_units(layers) * per
