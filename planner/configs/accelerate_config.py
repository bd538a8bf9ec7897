"""accelerate's config YAML for a plan: DeepSpeed (pointing at the emitted ds_config.json), FSDP, or plain
multi-GPU, single or multi-node. Keys are those `accelerate config` writes and `accelerate launch` reads
(accelerate/commands/config/config_args.py `ClusterConfig`; FSDP keys as turned into FSDP_* variables by
accelerate/utils/launch.py `prepare_multi_gpu_env`). Per-node values (machine rank, main address and port)
are left to the launch line (`--machine_rank $NODE_RANK --main_process_ip $MASTER_ADDR ...`)."""

from __future__ import annotations

from typing import Any

from planner.strategy import Engine, FsdpStrategy, FsdpVersion, GradCkpt, Offload, Precision, TrainConfig, ZeroStage

DS_CONFIG_FILE = "ds_config.json"

_FSDP_STRATEGY = {  # accelerate's names for torch.distributed.fsdp.ShardingStrategy members
    FsdpStrategy.full_shard: "FULL_SHARD", FsdpStrategy.shard_grad_op: "SHARD_GRAD_OP",
    FsdpStrategy.hybrid_shard: "HYBRID_SHARD", FsdpStrategy.no_shard: "NO_SHARD",
}


def mixed_precision(cfg: TrainConfig) -> str:
    """accelerate's --mixed_precision: autocast over fp32 master weights. bf16-true trains a model loaded
    in bf16 with no autocast, which accelerate calls "no"."""
    return {Precision.bf16_mixed: "bf16", Precision.fp16_mixed: "fp16"}.get(cfg.precision, "no")


def distributed_type(cfg: TrainConfig) -> str:
    if cfg.engine is Engine.deepspeed:
        return "DEEPSPEED"
    if cfg.engine is Engine.fsdp:
        return "FSDP"
    return "MULTI_GPU" if cfg.world_size > 1 else "NO"


def fsdp_section(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.fsdp_version is FsdpVersion.TWO:
        return fsdp2_section(cfg)
    return {
        "fsdp_version": 1,
        "fsdp_sharding_strategy": _FSDP_STRATEGY[cfg.fsdp],
        "fsdp_offload_params": cfg.offload is Offload.all,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": cfg.model.decoder_layer_class,
        # prefetch the next unit's all-gather before the current backward (torch FSDP's default)
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_forward_prefetch": False,
        # sharded checkpoints: no rank gathers the whole model in host memory to save
        "fsdp_state_dict_type": "SHARDED_STATE_DICT" if cfg.fsdp is not FsdpStrategy.no_shard else "FULL_STATE_DICT",
        # rank 0 loads the weights, the others start on the meta device and receive them by broadcast;
        # accelerate requires sync_module_states with it (utils/launch.py, prepare_multi_gpu_env)
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
        # LoRA mixes frozen and trainable tensors in one wrapped unit: FSDP1 needs the original parameters
        "fsdp_use_orig_params": True,
        "fsdp_activation_checkpointing": cfg.grad_ckpt is GradCkpt.full,
    }


def fsdp2_section(cfg: TrainConfig) -> dict[str, Any]:
    """FSDP2 (`fully_shard` per decoder layer, then the root): FULL_SHARD is `reshard_after_forward: true`,
    SHARD_GRAD_OP `false` (accelerate/utils/dataclasses.py, FullyShardedDataParallelPlugin); prefetching is
    implicit and the original parameters are kept, so FSDP1's prefetch and use_orig_params keys go."""
    ckpt = cfg.grad_ckpt is GradCkpt.full
    out: dict[str, Any] = {
        "fsdp_version": 2,
        "fsdp_reshard_after_forward": cfg.fsdp is not FsdpStrategy.shard_grad_op,
        "fsdp_offload_params": cfg.offload is Offload.all,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": cfg.model.decoder_layer_class,
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        # accelerate launch requires sync_module_states with cpu_ram_efficient_loading (utils/launch.py)
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
        "fsdp_activation_checkpointing": ckpt,
    }
    if ckpt and cfg.activation_offload:
        # each checkpointed layer's input goes to pinned host memory (fsdp_utils.py, fsdp2_apply_ac)
        out["fsdp_activation_checkpointing_offload"] = True
    return out


def build_accelerate_config(cfg: TrainConfig, *, ds_config_file: str = DS_CONFIG_FILE) -> dict[str, Any]:
    """`ds_config_file` as accelerate will open it: relative to the directory `accelerate launch` runs in."""
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": distributed_type(cfg),
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "num_machines": cfg.cluster.nodes,
        "num_processes": cfg.world_size,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if cfg.engine is not Engine.deepspeed:
        # under DeepSpeed the precision lives in ds_config.json only: accelerate refuses a config file that
        # also sets mixed_precision (accelerate/utils/dataclasses.py, DeepSpeedPlugin._deepspeed_config_checks)
        out["mixed_precision"] = mixed_precision(cfg)
    if cfg.engine is Engine.deepspeed:
        ds: dict[str, Any] = {"deepspeed_config_file": ds_config_file,
                              # build ZeRO-3 models partitioned from the start (deepspeed.zero.Init)
                              "zero3_init_flag": cfg.zero is ZeroStage.WEIGHTS}
        if cfg.cluster.nodes > 1:
            # one launcher per node started by the user (torchrun-style), no pdsh/ssh from node 0
            ds["deepspeed_multinode_launcher"] = "standard"
        out["deepspeed_config"] = ds
    elif cfg.engine is Engine.fsdp:
        out["fsdp_config"] = fsdp_section(cfg)
        if cfg.fsdp_version is FsdpVersion.TWO and cfg.fsdp is FsdpStrategy.hybrid_shard:
            out["parallelism_config"] = parallelism_section(cfg)
    return out


def parallelism_section(cfg: TrainConfig) -> dict[str, Any]:
    """FSDP2's hybrid sharding: accelerate's ParallelismConfig builds a 2-D DeviceMesh (dp_replicate, dp_shard)
    and `fully_shard` shards over its shard dimension, all-reducing across the replicate one
    (accelerate/parallelism_config.py: "dp_replicate_size > 1 and dp_shard_size > 1 ... Hybrid Sharded Data
    Parallel"; the keys `accelerate config` writes, commands/config/cluster.py). The shard group is a node's
    GPUs (planner.engines.fsdp.shard_group), the replicas are the nodes."""
    from planner.engines.fsdp import shard_group

    shard = shard_group(cfg)
    return {"parallelism_config_dp_replicate_size": cfg.dp // shard, "parallelism_config_dp_shard_size": shard,
            "parallelism_config_tp_size": 1, "parallelism_config_cp_size": 1}
