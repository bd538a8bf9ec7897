"""What the trainers share (the Trainer path in runner.train, DeepSpeed's pipeline engine in
runner.parallel.pipeline, the TRL stages in runner.stages): the run's options, its output folder (checkpoints,
metrics, run files), its data and its TrainingArguments. Apart from runner.train, which dispatches to the
others, so that no import runs in a circle."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import PlanError
from planner.gpus import is_cpu
from planner.strategy import (
    Engine,
    FsdpStrategy,
    FsdpVersion,
    GradCkpt,
    Offload,
    Optimizer,
    Precision,
    Stage,
    TrainConfig,
)
from runner import switches

if TYPE_CHECKING:
    from planner.configs.ds_config import Hyperparams

# `metrics.jsonl`, `run_summary.json` and checkpoints live in the output directory beside the adapter
RUN_INFO_FILE = "ftplan_run.json"  # where the base model came from, for `ftplan merge`
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    model_path: Path
    data: Path
    output: Path
    max_steps: int = 30
    resume: bool = False
    save_steps: int = 50
    eval_fraction: float = 0.05
    learning_rate: float | None = None  # None: the plan's (planner.configs.ds_config.learning_rate)
    warmup_steps: int = 0
    data_format: str = "auto"
    template: str | None = None
    neftune_alpha: float | None = None
    rope_scaling: str | None = None
    modules_to_save: tuple[str, ...] = ()
    seed: int = 42
    dpo_beta: float = 0.1  # DPO's beta (trl DPOConfig.beta default)
    rewards: tuple[str, ...] = ()  # grpo / rloo: reward rules, module:function or reward model dirs (stages.rewards)
    report: bool = True  # `ftplan run` prints predicted vs measured at the end (reports.run_report)
    calibration: Path | None = None  # `ftplan profile ... --calibrate` output, for the predictions of the summary


def on_cuda_device(cfg: TrainConfig) -> bool:
    if is_cpu(cfg.cluster.gpu):
        return False
    import torch

    return torch.cuda.is_available()


def checkpoint_step(checkpoint: Path | None) -> int:
    """The global step of a Trainer checkpoint folder (checkpoint-N), 0 for none."""
    return int(CHECKPOINT_RE.match(checkpoint.name).group(1)) if checkpoint is not None else 0


def start_metrics(output: Path, resume_from: Path | None, *, is_main: bool) -> Path:
    """The run's metrics file: on resume kept up to the checkpoint's step, else begun afresh (main process only)."""
    from runner import metrics as mt

    path = output / mt.METRICS_FILE
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            mt.truncate_metrics(path, checkpoint_step(resume_from))
        else:
            path.unlink(missing_ok=True)
    return path


def latest_checkpoint(output: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in output.glob("checkpoint-*")
             if (m := CHECKPOINT_RE.match(p.name)) and (p / "trainer_state.json").exists()]
    return max(found)[1] if found else None


def prepare_data(cfg: TrainConfig, opts: RunOptions, tokenizer: Any) -> tuple[list, list]:
    from runner import data as d

    sft = cfg.stage is not Stage.pt
    segments = d.load_segments(opts.data, fmt=d.DataFormat(opts.data_format), template=opts.template, sft=sft)
    examples = (d.tokenize_sft if sft else d.tokenize_pt)(segments, tokenizer, cfg.seq_len)
    if not examples:
        raise PlanError(f"{opts.data}: no example keeps a trained token within seq_len {cfg.seq_len}")
    return d.split_eval(examples, opts.eval_fraction, opts.seed)


# TrainingArguments.optim names (transformers/training_args.py, OptimizerNames)
_OPTIM = {Optimizer.adamw: "adamw_torch", Optimizer.adamw_8bit: "adamw_bnb_8bit",
          Optimizer.paged_adamw: "paged_adamw_32bit", Optimizer.paged_adamw_8bit: "paged_adamw_8bit",
          Optimizer.sgd: "sgd"}


def optim_name(cfg: TrainConfig, on_cuda: bool) -> str:
    """bitsandbytes' optimizers run on CUDA and on its CPU backend (runner.quant); paged ones run unpaged there."""
    if cfg.optimizer not in (Optimizer.adamw, Optimizer.sgd):
        from runner.quant import require_bitsandbytes

        require_bitsandbytes(f"optimizer {cfg.optimizer.value}")
    return trainer_optim(cfg)


def trainer_optim(cfg: TrainConfig) -> str:
    """TrainingArguments.optim for the plan's optimizer, as an emitted Trainer config names it."""
    return fused_adamw_name(cfg) or _OPTIM[cfg.optimizer]


def optim_args(cfg: TrainConfig, hp: Hyperparams | None = None) -> str | None:
    """TrainingArguments.optim_args: SGD's momentum, which the Trainer reads only from there (transformers
    trainer_optimizer.py `_get_sgd`; planner.configs.ds_config.Hyperparams.sgd_momentum); None for the others."""
    from planner.configs.ds_config import DEFAULT_HYPER

    return f"momentum={(hp or DEFAULT_HYPER).sgd_momentum:g}" if cfg.optimizer is Optimizer.sgd else None


def fused_adamw_name(cfg: TrainConfig) -> str:
    """TrainingArguments.optim for torch's fused AdamW (--fused-adamw), '' otherwise."""
    return "adamw_torch_fused" if cfg.fused_adamw and cfg.optimizer is Optimizer.adamw else ""


def fsdp_arguments(cfg: TrainConfig) -> dict[str, Any]:
    """TrainingArguments keywords for an FSDP plan: `fsdp=True` with everything in `fsdp_config`. transformers 5.25
    deprecates `fsdp` as a string or list of FSDPOption words (training_args.py _apply_legacy_fsdp_to_config: "Use
    `fsdp=True` and configure everything via `fsdp_config` instead"), which it translated into the keys written here:
    the sharding strategy into `reshard_after_forward` (FSDP2: full_shard True, shard_grad_op False; FSDP1: the
    strategy's name) and `offload` into `cpu_offload`; `auto_wrap` was the default policy already
    (TRANSFORMER_BASED_WRAP). FSDP2's hybrid_shard, which that translation refused, is accelerate's 2-D mesh:
    `parallelism_config` with the shard group planner.engines.fsdp.shard_group counts (as accelerate.yaml's
    parallelism_config section, planner.configs.accelerate_config.parallelism_section)."""
    two = cfg.fsdp_version is FsdpVersion.TWO
    fsdp_config: dict[str, Any] = {
        "transformer_layer_cls_to_wrap": [cfg.model.decoder_layer_class],
        "reshard_after_forward": cfg.fsdp is not FsdpStrategy.shard_grad_op if two else cfg.fsdp.value,
        "activation_checkpointing": False, "version": int(cfg.fsdp_version)}
    if cfg.offload is Offload.all:
        fsdp_config["cpu_offload"] = True
    if not two:
        # FSDP1-only keys (transformers/training_args.py, _process_fsdp_args); LoRA mixes frozen and trained tensors
        # in one wrapped unit, which FSDP1 can hold only with the original parameters
        fsdp_config |= {"backward_prefetch": "backward_pre", "forward_prefetch": False, "use_orig_params": True,
                        "sync_module_states": True}
    out: dict[str, Any] = {"fsdp": True, "fsdp_config": fsdp_config}
    if two and cfg.fsdp is FsdpStrategy.hybrid_shard:
        from accelerate.parallelism_config import ParallelismConfig

        from planner.engines.fsdp import shard_group

        shard = shard_group(cfg)
        out["parallelism_config"] = ParallelismConfig(dp_replicate_size=cfg.dp // shard, dp_shard_size=shard)
    return out


def checkpointing_fields(cfg: TrainConfig) -> dict[str, Any]:
    """TrainingArguments' checkpointing keywords for the plan, under transformers 5.25's names
    (`gradient_checkpointing*` are deprecated aliases, training_args.py __post_init__). HF checkpointing recomputes
    whole layers; the planner's "selective" maps to it as its closest."""
    ckpt = cfg.grad_ckpt is not GradCkpt.none
    return {"activation_checkpointing": ckpt,
            "activation_checkpointing_kwargs": {"use_reentrant": False} if ckpt else None}


def emitted_checkpointing_fields(cfg: TrainConfig) -> dict[str, Any]:
    """checkpointing_fields for an emitted Trainer config or command line: --activation-offload there is the
    Trainer's own `offload` of the checkpointed layers' inputs (transformers modeling_utils.py
    _activation_checkpointing_enable: save_on_cpu around each checkpointed call), the part the planner counts
    (planner.offload_activations); `ftplan run` offloads around the whole step instead (offloading_trainer), which
    switches.activation_offload_note says in the file."""
    out = checkpointing_fields(cfg)
    if cfg.activation_offload and out["activation_checkpointing"]:
        out["activation_checkpointing_kwargs"] = {**out["activation_checkpointing_kwargs"], "offload": True}
    return out


def engine_fields(cfg: TrainConfig) -> dict[str, Any]:
    """TrainingArguments keywords for the plan's engine: the DeepSpeed config with the Trainer's "auto" values
    (ds_config.trainer.json's), or the FSDP settings (fsdp_arguments); {} for DDP and a single process."""
    if cfg.engine is Engine.deepspeed:
        from planner.configs.ds_config import build_ds_config

        return {"deepspeed": build_ds_config(cfg, for_trainer=True)}
    if cfg.engine is Engine.fsdp and cfg.world_size > 1:
        return fsdp_arguments(cfg)
    return {}


def training_fields(cfg: TrainConfig, opts: RunOptions, *, on_cuda: bool, has_eval: bool,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The TrainingArguments keywords `ftplan run` trains the plan with (training_arguments builds them); `extra`: a TRL
    stage's own fields (runner.stages), which win."""
    from planner.configs.ds_config import learning_rate

    kwargs: dict[str, Any] = engine_fields(cfg)
    accelerator = switches.accelerator_config(cfg)  # --sync-each-batch: no micro-batch under no_sync
    if not on_cuda and cfg.engine is Engine.deepspeed:
        # DeepSpeed picks the CPU through DS_ACCELERATOR=cpu, but the Trainer gives accelerate no backend for
        # DeepSpeed and accelerate then counts one process (accelerate/state.py, PartialState: "No backend == no
        # distributed training"), so the batch sizes would not multiply out. Set the shared state up with gloo first.
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        accelerator["use_configured_state"] = True
    elif not on_cuda:
        # DDP / FSDP on the CPU: accelerate's cpu flag and gloo
        kwargs["use_cpu"] = True
        if cfg.world_size > 1:
            kwargs["ddp_backend"] = "gloo"
    if accelerator:
        kwargs["accelerator_config"] = accelerator
    mixed = on_cuda and cfg.precision in (Precision.bf16_mixed, Precision.fp16_mixed)
    fields: dict[str, Any] = dict(
        output_dir=str(opts.output),
        per_device_train_batch_size=cfg.micro_batch,
        per_device_eval_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        max_steps=opts.max_steps,
        learning_rate=opts.learning_rate if opts.learning_rate is not None else learning_rate(cfg),
        warmup_steps=opts.warmup_steps,
        lr_scheduler_type="linear",
        optim=optim_name(cfg, on_cuda), optim_args=optim_args(cfg),
        bf16=mixed and cfg.precision is Precision.bf16_mixed,
        fp16=mixed and cfg.precision is Precision.fp16_mixed,
        **checkpointing_fields(cfg),
        neftune_noise_alpha=opts.neftune_alpha,
        logging_strategy="steps", logging_steps=1,
        save_strategy="steps", save_steps=opts.save_steps,
        eval_strategy="no", do_eval=has_eval,
        report_to=[],  # TensorBoard events come from runner.metrics' callback, under output_dir/runs
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True, seed=opts.seed, data_seed=opts.seed,
        remove_unused_columns=False, dataloader_num_workers=0,
        ddp_find_unused_parameters=False if cfg.engine is Engine.ddp else None,
        **switches.trainer_arguments(cfg),
        **kwargs,
    )
    fields.update(extra or {})  # a stage's own values win (GRPO counts its tokens itself)
    return fields


def training_arguments(cfg: TrainConfig, opts: RunOptions, *, on_cuda: bool, has_eval: bool,
                       args_class: type | None = None, extra: dict[str, Any] | None = None) -> Any:
    """TrainingArguments for the plan; `args_class` / `extra`: a TRL config class (a TrainingArguments subclass)
    and its own fields, for the rm / dpo / grpo / rloo stages (runner.stages)."""
    from transformers import TrainingArguments

    fields = training_fields(cfg, opts, on_cuda=on_cuda, has_eval=has_eval, extra=extra)
    return (args_class or TrainingArguments)(**fields)


def offloading_trainer(base: type, cfg: TrainConfig) -> type:
    """The trainer class `ftplan run` trains the plan with: under --activation-offload, `base` with every tensor
    autograd saves in a training step kept in (pinned) host memory: torch.autograd.graph.save_on_cpu, what torchtune's
    OffloadActivations and accelerate's FSDP2 offload_wrapper build on. With checkpointing only the layer inputs are
    saved, so only they move; backward's recomputation runs outside the context and stays on the device. The TRL
    stages' trainers (runner.stages) take it too: GRPO's generation inside the step runs under no_grad, which saves
    nothing."""
    if not cfg.activation_offload:
        return base
    import torch

    class OffloadingTrainer(base):  # type: ignore[misc, valid-type]
        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
                return super().training_step(*args, **kwargs)

    return OffloadingTrainer


def write_run_files(cfg: TrainConfig, ranks: list[dict[str, Any]], summary: dict[str, Any], *, opts: RunOptions,
                    tokenizer: Any, src: Any, on_cuda: bool) -> None:
    """Main process, after training: the tokenizer beside the model, run_summary.json with the planner's
    figures compared (its rows added to `summary`), and run_info.json naming the model the run started from."""
    from planner.atomic import write_text_atomic
    from planner.calibration import load_calibration
    from runner import metrics as mt
    from runner.summary import comparison

    tokenizer.save_pretrained(str(opts.output))
    summary |= comparison(cfg, ranks, on_cuda=on_cuda, cal=load_calibration(opts.calibration))
    write_text_atomic(opts.output / mt.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    src_info = {"model_path": str(src.directory), "gguf_file": src.gguf_file, "method": cfg.method.value}
    write_text_atomic(opts.output / RUN_INFO_FILE, json.dumps(src_info, indent=2) + "\n")


