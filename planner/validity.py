"""Which configurations can run, with the reason when one cannot. `problems` is pure and fast (the
search calls it for every candidate); `validate` raises the first problem as a PlanError."""

from __future__ import annotations

from planner.errors import PlanError
from planner.strategy import (
    Engine,
    FsdpStrategy,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    PipeSchedule,
    Precision,
    Quant,
    TrainConfig,
    ZeroStage,
)


def problems(cfg: TrainConfig) -> list[str]:
    m, out = cfg.model, []
    world = cfg.world_size
    for name, value in (("micro-batch", cfg.micro_batch), ("grad-accum", cfg.grad_accum), ("seq-len", cfg.seq_len),
                        ("tp", cfg.tp), ("pp", cfg.pp), ("lora-r", cfg.lora_r)):
        if value < 1:
            out.append(f"--{name} must be at least 1, got {value}")
    if out:
        return out
    if world % (cfg.tp * cfg.pp):
        out.append(f"TP({cfg.tp}) * PP({cfg.pp}) = {cfg.tp * cfg.pp} does not divide {world} GPUs")
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
    if cfg.seq_len > m.max_seq_len:
        out.append(f"--seq-len {cfg.seq_len} exceeds the {m.max_seq_len} positions of {m.name} "
                   "(add --rope-scaling, e.g. linear:2.0)")
    # methods and precision
    if cfg.method is Method.qlora and cfg.quant is Quant.none:
        out.append("QLoRA needs --quant nf4 or int8")
    if cfg.method is not Method.qlora and cfg.quant is not Quant.none:
        out.append(f"--quant {cfg.quant.value} quantizes frozen base weights: use --method qlora")
    if cfg.method is Method.qlora and cfg.tp > 1:
        out.append("bitsandbytes-quantized weights cannot be split by tensor parallelism")
    if cfg.freeze_layers and cfg.method is not Method.full:
        out.append("--freeze-layers applies to full fine-tuning; LoRA already freezes the base model")
    if cfg.freeze_layers >= m.num_layers:
        out.append(f"--freeze-layers {cfg.freeze_layers} leaves none of the {m.num_layers} layers to train")
    if not cfg.cluster.gpu.supports_bf16 and cfg.precision in (Precision.bf16_mixed, Precision.bf16_true):
        out.append(f"{cfg.cluster.gpu.name} has no bf16 support: use --precision 16-mixed")
    # engines
    if cfg.engine is not Engine.deepspeed and cfg.zero is not ZeroStage.DISABLED:
        out.append("FSDP and ZeRO are exclusive" if cfg.engine is Engine.fsdp else "--zero needs DeepSpeed")
    if cfg.engine is Engine.deepspeed:
        if cfg.tp > 1 and cfg.zero >= ZeroStage.WEIGHTS:
            # DeepSpeed AutoTP training (tensor_parallel.autotp_size, DeepSpeed >= 0.16.4) composes with
            # ZeRO-0/1/2; ZeRO-3 partitions the same weights again (DeepSpeed AutoTP training tutorial)
            out.append("DeepSpeed AutoTP training supports ZeRO-0/1/2, not ZeRO-3")
        if cfg.pp > 1 and cfg.zero >= ZeroStage.GRADIENTS:
            out.append("DeepSpeed's pipeline engine supports ZeRO-0/1 only, not ZeRO-2/3")
        if cfg.precision is Precision.bf16_true:
            out.append("DeepSpeed keeps fp32 master weights: use bf16-mixed (or DDP/FSDP for bf16-true)")
        if cfg.offload is not Offload.none and cfg.zero is ZeroStage.DISABLED:
            out.append("offload needs ZeRO stage 1, 2 or 3")
        if cfg.offload is Offload.all and cfg.zero is not ZeroStage.WEIGHTS:
            out.append("parameter offload needs ZeRO-3 (or FSDP)")
        if cfg.offload_device is OffloadDevice.nvme and cfg.offload is not Offload.none and \
                cfg.zero is not ZeroStage.WEIGHTS:
            out.append("NVMe offload (ZeRO-Infinity) needs ZeRO-3")
        if cfg.offload is not Offload.none and cfg.optimizer is not Optimizer.adamw:
            out.append("offloaded optimizer runs DeepSpeed's CPU Adam: use --optimizer adamw")
        if cfg.optimizer in (Optimizer.paged_adamw, Optimizer.paged_adamw_8bit) and cfg.zero >= ZeroStage.WEIGHTS:
            out.append("paged optimizers need whole tensors on the GPU, not ZeRO-3 partitions")
        if cfg.method is Method.qlora and cfg.zero is ZeroStage.WEIGHTS and cfg.quant is not Quant.nf4:
            out.append("QLoRA with ZeRO-3 needs nf4 with bnb_4bit_quant_storage (int8 cannot be sharded)")
    elif cfg.engine is Engine.fsdp:
        if cfg.offload is Offload.optimizer:
            out.append("FSDP offloads parameters, gradients and optimizer together: use --offload all")
        if cfg.offload_device is OffloadDevice.nvme and cfg.offload is not Offload.none:
            out.append("FSDP offloads to CPU only; NVMe offload needs DeepSpeed ZeRO-3")
        if cfg.pp > 1:
            out.append("pipeline parallelism with FSDP is not supported here (use DeepSpeed ZeRO-1 with PP)")
        if cfg.tp > 1:
            out.append("tensor parallelism with FSDP needs FSDP2 + DTensor, which accelerate's FSDP config does not "
                       "express (use DeepSpeed AutoTP with ZeRO-1/2)")
        if cfg.method is Method.qlora and cfg.quant is not Quant.nf4:
            out.append("QLoRA with FSDP needs nf4 with bnb_4bit_quant_storage (int8 cannot be sharded)")
        if cfg.fsdp is FsdpStrategy.hybrid_shard and cfg.cluster.nodes == 1:
            out.append("hybrid_shard shards within a node and replicates across nodes: it needs several nodes")
    else:
        if cfg.offload is not Offload.none:
            out.append("offload needs DeepSpeed ZeRO or FSDP")
        if cfg.pp > 1 or cfg.tp > 1:
            out.append("TP and PP need DeepSpeed (pipeline engine, AutoTP) here, not plain DDP")
    if cfg.offload is Offload.none and cfg.offload_device is OffloadDevice.nvme:
        out.append("--offload-device nvme needs --offload optimizer or all")
    return out


def validate(cfg: TrainConfig) -> TrainConfig:
    found = problems(cfg)
    if found:
        raise PlanError(found[0])
    return cfg
