"""DeepSpeed config for a plan, built from the TrainConfig (never from a template).

Two variants: the plain one has every value resolved (batch sizes that multiply out at the plan's
data-parallel size, bucket sizes from the model's hidden size), so `deepspeed.initialize(config=...)`
and the `deepspeed` launcher take it as is; the `for_trainer` one puts "auto" exactly where the
transformers Trainer fills values from its TrainingArguments
(transformers/integrations/deepspeed.py, `HfTrainerDeepSpeedConfig.trainer_config_process/_finalize`).
Keys and defaults follow DeepSpeed's config schema (deepspeed/runtime/zero/config.py,
runtime/zero/offload_config.py, runtime/precision_config.py; docs: deepspeed.ai/docs/config-json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner import deepspeed_sizes as sizes
from planner.strategy import (
    Engine,
    GradCkpt,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    TrainConfig,
    ZeroStage,
)

AUTO = "auto"


@dataclass(frozen=True, kw_only=True, slots=True)
class Hyperparams:
    """Optimizer settings written into the files. Learning rates follow LLaMA-Factory's examples
    (examples/train_lora/llama3_lora_sft.yaml: 1.0e-4; examples/train_full/llama3_full_sft.yaml: 1.0e-5);
    betas/eps/clipping are the transformers TrainingArguments defaults (adam_beta1=0.9, adam_beta2=0.999,
    adam_epsilon=1e-8, max_grad_norm=1.0); warmup_num_steps is DeepSpeed's WarmupLR default
    (deepspeed/runtime/lr_schedules.py, `WarmupLR.__init__`). ftplan's `sgd` is SGD with momentum, whose one buffer
    per parameter the planner counts (planner.states.optimizer_state_bytes_per_param): torch.optim.SGD keeps no
    `momentum_buffer` at its default momentum 0, and the Trainer's `optim="sgd"` passes momentum only from
    `optim_args` (transformers trainer_optimizer.py `_get_sgd`), so every file and run sets 0.9, the momentum of
    Goyal et al. 2017 (arXiv:1706.02677, Sec. 5) and torchvision's reference recipes."""

    lr_full: float = 1e-5
    lr_adapter: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    sgd_momentum: float = 0.9
    max_grad_norm: float = 1.0
    warmup_num_steps: int = 1000
    nvme_path: str = "/local_nvme"  # DeepSpeed docs' example mount point; edit to the node's NVMe


DEFAULT_HYPER = Hyperparams()


def learning_rate(cfg: TrainConfig, hp: Hyperparams = DEFAULT_HYPER) -> float:
    return hp.lr_adapter if cfg.trains_adapter else hp.lr_full


def needs_ds_optimizer(cfg: TrainConfig) -> bool:
    """Offloaded optimizer states are stepped by DeepSpeed's CPU Adam, which DeepSpeed builds itself
    from the config's optimizer section (a client torch optimizer under offload is refused unless
    zero_force_ds_cpu_optimizer is false: deepspeed/runtime/engine.py, `_configure_optimizer`)."""
    return cfg.engine is Engine.deepspeed and cfg.offload is not Offload.none


def _untested_optimizer(cfg: TrainConfig) -> bool:
    # ZeRO accepts torch Adam/AdamW/Adagrad and DeepSpeed's own optimizers without the flag
    # (deepspeed/runtime/zero/utils.py, ZERO_SUPPORTED_OPTIMIZERS); bitsandbytes and SGD need it.
    return cfg.zero > ZeroStage.DISABLED and not needs_ds_optimizer(cfg) and cfg.optimizer is not Optimizer.adamw


def _precision(cfg: TrainConfig, auto: bool) -> dict[str, Any]:
    """bf16 needs no loss scaling; fp16 gets dynamic loss scaling (loss_scale 0 = dynamic, starting at
    2**initial_scale_power; the values are DeepSpeed's defaults, DeepSpeed docs config-json "fp16",
    runtime/precision_config.py). The Trainer variant leaves both switches to the Trainer's --bf16/--fp16."""
    bf16 = cfg.precision in (Precision.bf16_mixed, Precision.bf16_true)
    fp16 = cfg.precision is Precision.fp16_mixed
    return {"bf16": {"enabled": AUTO if auto else bf16},
            "fp16": {"enabled": AUTO if auto else fp16, "loss_scale": 0, "initial_scale_power": 16,
                     "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}}


def _offload_section(cfg: TrainConfig, hp: Hyperparams, *, param: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"device": cfg.offload_device.value, "pin_memory": True}
    if cfg.offload_device is OffloadDevice.nvme:
        out["nvme_path"] = hp.nvme_path
        if param:
            out["buffer_count"] = sizes.NVME_PARAM_BUFFER_COUNT
            out["buffer_size"] = sizes.nvme_param_buffer_elements(cfg.model)
    return out


def _zero(cfg: TrainConfig, hp: Hyperparams, auto: bool) -> dict[str, Any]:
    m = cfg.model
    z: dict[str, Any] = {"stage": int(cfg.zero)}
    if cfg.zero is ZeroStage.DISABLED:
        return z
    z["overlap_comm"] = sizes.OVERLAP_COMM
    z["contiguous_gradients"] = True
    z["reduce_bucket_size"] = AUTO if auto else sizes.reduce_bucket_elements(m)
    if cfg.zero < ZeroStage.WEIGHTS:
        z["reduce_scatter"] = True
        z["allgather_partitions"] = True
        z["allgather_bucket_size"] = sizes.allgather_bucket_elements(m)
    else:
        z["stage3_prefetch_bucket_size"] = AUTO if auto else sizes.prefetch_bucket_elements(m)
        z["stage3_param_persistence_threshold"] = AUTO if auto else sizes.param_persistence_threshold(m)
        z["stage3_max_live_parameters"] = sizes.STAGE3_MAX_LIVE_PARAMETERS
        z["stage3_max_reuse_distance"] = sizes.STAGE3_MAX_REUSE_DISTANCE
        z["sub_group_size"] = sizes.SUB_GROUP_SIZE
        # saving a ZeRO-3 model as one 16-bit state dict gathers the shards (needed by save_pretrained)
        z["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.offload is not Offload.none:
        z["offload_optimizer"] = _offload_section(cfg, hp, param=False)
    if cfg.offload is Offload.all:
        z["offload_param"] = _offload_section(cfg, hp, param=True)
    return z


def _optimizer_and_scheduler(cfg: TrainConfig, hp: Hyperparams, auto: bool) -> dict[str, Any]:
    lr = learning_rate(cfg, hp)
    optimizer = {"type": "AdamW", "params": {
        "lr": AUTO if auto else lr, "betas": AUTO if auto else list(hp.betas),
        "eps": AUTO if auto else hp.eps, "weight_decay": AUTO if auto else hp.weight_decay}}
    if auto:
        # the Trainer's convention: it fills the total from its step count (trainer_config_finalize)
        scheduler = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": AUTO, "warmup_max_lr": AUTO,
                                                         "warmup_num_steps": AUTO, "total_num_steps": AUTO}}
    else:
        # the run length is unknown here: linear warmup, then constant (deepspeed/runtime/lr_schedules.py)
        scheduler = {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                                    "warmup_num_steps": hp.warmup_num_steps,
                                                    "warmup_type": "linear"}}
    return {"optimizer": optimizer, "scheduler": scheduler}


def build_ds_config(cfg: TrainConfig, *, for_trainer: bool = False, hp: Hyperparams = DEFAULT_HYPER) -> dict:
    """The ds_config dict for `cfg` (a DeepSpeed plan). DeepSpeed's batch identity
    train_batch_size = micro x accum x data-parallel size holds by construction
    (deepspeed/runtime/config.py, `DeepSpeedConfig._batch_assertion`)."""
    auto = for_trainer
    out: dict[str, Any] = {
        "train_batch_size": AUTO if auto else cfg.global_batch,
        "train_micro_batch_size_per_gpu": AUTO if auto else cfg.micro_batch,
        "gradient_accumulation_steps": AUTO if auto else cfg.grad_accum,
        "gradient_clipping": AUTO if auto else hp.max_grad_norm,
        **_precision(cfg, auto),
        "zero_optimization": _zero(cfg, hp, auto),
    }
    if needs_ds_optimizer(cfg):
        out.update(_optimizer_and_scheduler(cfg, hp, auto))
    if _untested_optimizer(cfg):
        out["zero_allow_untested_optimizer"] = True
    if cfg.tp > 1:
        # AutoTP training (deepspeed/runtime/tensor_parallel/config.py, TPTrainingConfig.autotp_size)
        out["tensor_parallel"] = {"autotp_size": cfg.tp}
        # saving gathers the TP shards into one state dict (engine._replace_module_consolidated_state_dict); without
        # it accelerate's get_state_dict refuses and the Trainer writes a DeepSpeed checkpoint in place of the model
        out["zero_optimization"]["gather_16bit_weights_on_model_save"] = True
    if cfg.pp > 1:
        # the pipeline engine's section (deepspeed/runtime/config.py, get_pipeline_config): p stages of the decoder
        # layers, each recomputed in backward under checkpointing; runner/parallel/pipeline.py builds from it
        out["pipeline"] = {"stages": cfg.pp, "partition": "type:DecoderPipe",
                           "activation_checkpoint_interval": 0 if cfg.grad_ckpt is GradCkpt.none else 1}
    out["steps_per_print"] = 10
    out["wall_clock_breakdown"] = False
    return out
