"""The memory switches (loss, kernels, activation offload, FSDP version) in each target library's words.

- Hugging Face Trainer: `use_liger_kernel` with `liger_kernel_config` (transformers/training_args.py:
  kwargs of Liger's `_apply_liger_kernel_to_instance`: rope, swiglu, rms_norm, cross_entropy,
  fused_linear_cross_entropy), `fsdp_config["version"]` (2 is transformers' default).
- LLaMA-Factory: `enable_liger_kernel` (hparams/model_args.py), which applies Liger's RoPE, RMSNorm,
  SwiGLU and fused linear cross-entropy together (model/model_utils/liger_kernel.py).
- TRL's GRPOConfig / RLOOConfig (TrainingArguments subclasses) take the Trainer's `use_liger_kernel`,
  `liger_kernel_config` and `torch_compile` as they are, but GRPOTrainer / RLOOTrainer refuse Liger's fused linear
  cross-entropy: they compute log-probabilities through a fused LM head of their own (trl 1.16
  trainer/grpo_trainer.py and rloo_trainer.py __init__: "`liger_kernel_config={"fused_linear_cross_entropy": True}`
  is not supported").
- torch.compile: the Trainer's `torch_compile` (accelerate compiles the whole model, loss included), which
  LLaMA-Factory's YAML passes through to the Trainer's arguments as `torch_compile` too. The Trainer hands it to
  accelerate as TorchDynamoPlugin(backend=torch_compile_backend, mode=None), the backend "inductor" by default
  (transformers/training_args.py __post_init__, trainer.py _build_accelerator_args); accelerate's config file says
  the same as `dynamo_config: {dynamo_backend: INDUCTOR}` (accelerate/commands/launch.py, mode "default" and no
  fullgraph), which `accelerate launch` exports as ACCELERATE_DYNAMO_BACKEND for plain and FSDP runs
  (accelerate/utils/launch.py prepare_simple_launcher_cmd_env, prepare_multi_gpu_env) but not for DeepSpeed ones
  (prepare_deepspeed_cmd_env).
- accelerate: `fsdp_version`, `fsdp_reshard_after_forward`, and with FSDP2 and activation checkpointing,
  `fsdp_activation_checkpointing_offload` (accelerate/utils/fsdp_utils.py fsdp2_apply_ac: offload_wrapper,
  i.e. save_on_cpu around each checkpointed layer).
Neither the Trainer nor LLaMA-Factory has torchtune's chunked loss; DeepSpeed's `cpu_checkpointing` acts only
on deepspeed.checkpointing (Megatron-style models), not on transformers' torch.utils.checkpoint.
- Reducing gradients on every micro-batch (`sync_each_batch`): accelerate's
  `GradientAccumulationPlugin(sync_each_batch=True)` (accelerate/utils/dataclasses.py), which the Trainer builds from
  `TrainingArguments.accelerator_config["gradient_accumulation_kwargs"]` (transformers/trainer.py,
  create_accelerator_and_postprocess) and reads in its inner loop: with it no micro-batch runs under
  `accelerator.no_sync` (trainer.py, _inner_training_loop). LLaMA-Factory's YAML passes `accelerator_config` to the
  same TrainingArguments; a Trainer script's command line takes it as JSON (TrainingArguments._VALID_DICT_FIELDS);
  accelerate's config file has no such key (accelerate/commands/config/config_args.py, ClusterConfig), so a script
  of one's own sets the plugin in code.
- Packed documents (`doc_len`): LLaMA-Factory's `neat_packing` (hparams/data_args.py: "sequence packing without
  cross-attention", which turns `packing` on; SFT only, hparams/parser.py), which runs FlashAttention-2's varlen
  kernel under `flash_attn: fa2` (data/collator.py SFTDataCollatorWith4DAttentionMask: position_ids restart per
  document, no attention mask) and a 4-D block-diagonal mask otherwise (prepare_4d_attention_mask).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from planner.runnable_stages import trl_fused_loss_refusal
from planner.strategy import Attn, CrossEntropy, Engine, GradCkpt, Kernels, Stage, TrainConfig

# the kernels `_apply_liger_kernel_to_instance(model)` applies when the Trainer's liger_kernel_config is None (the
# keyword defaults of liger_kernel/transformers/monkey_patch.py apply_liger_kernel_to_llama and its siblings)
LIGER_DEFAULTS = {"rope": True, "swiglu": True, "rms_norm": True, "cross_entropy": False,
                  "fused_linear_cross_entropy": True}


def uses_liger(cfg: TrainConfig) -> bool:
    return cfg.kernels is Kernels.liger or cfg.cross_entropy is CrossEntropy.fused


def liger_kernel_config(cfg: TrainConfig) -> dict[str, bool]:
    """Trainer `liger_kernel_config`: the kernels the plan chose, and the fused loss if it chose it."""
    kernels = cfg.kernels is Kernels.liger
    return {"rope": kernels, "swiglu": kernels, "rms_norm": kernels, "cross_entropy": False,
            "fused_linear_cross_entropy": cfg.cross_entropy is CrossEntropy.fused}


def accelerator_config(cfg: TrainConfig) -> dict[str, Any]:
    """TrainingArguments.accelerator_config entries for the switches (transformers/trainer_pt_utils.py,
    AcceleratorConfig): `gradient_accumulation_kwargs` for --sync-each-batch, {} otherwise."""
    return {"gradient_accumulation_kwargs": {"sync_each_batch": True}} if cfg.sync_each_batch else {}


def trainer_arguments(cfg: TrainConfig) -> dict[str, Any]:
    """TrainingArguments keywords for the switches; `accelerator_config` (its own function) is merged by the
    caller with the run's other accelerator settings."""
    out: dict[str, Any] = {"torch_compile": True} if cfg.torch_compile else {}
    if uses_liger(cfg):
        out.update(use_liger_kernel=True, liger_kernel_config=liger_kernel_config(cfg))
    return out


def trl_loss_refusal(cfg: TrainConfig) -> str | None:
    """Why TRL's GRPOTrainer / RLOOTrainer cannot run the plan's loss, None when they can (the planner's rule:
    planner.runnable_stages.trl_fused_loss_refusal, which marks such plans not runnable)."""
    return trl_fused_loss_refusal(cfg)


def trl_notes(cfg: TrainConfig) -> list[str]:
    """What a TRL trainer config (grpo_config.yaml / rloo_config.yaml) cannot run as the plan says, for its header."""
    refusal = trl_loss_refusal(cfg)
    return [refusal] if refusal else []


def accelerate_fields(cfg: TrainConfig) -> dict[str, Any]:
    """accelerate config-file keys for the switches: --torch-compile as `dynamo_config`, where `accelerate launch`
    passes it on (not under DeepSpeed: accelerate_notes says so), {} otherwise."""
    if not cfg.torch_compile or cfg.engine is Engine.deepspeed:
        return {}
    return {"dynamo_config": {"dynamo_backend": "INDUCTOR"}}


def accelerator_config_field(cfg: TrainConfig) -> dict[str, Any]:
    """`accelerator_config` as a field of an emitted Trainer config (a TRL GRPOConfig / RLOOConfig YAML), or {}."""
    accel = accelerator_config(cfg)
    return {"accelerator_config": accel} if accel else {}


def trainer_cli_flags(cfg: TrainConfig) -> str:
    """Flags for a Trainer script's command line (HfArgumentParser). `liger_kernel_config` is not parsed
    from the command line (it is not among TrainingArguments._VALID_DICT_FIELDS), so a script that wants
    part of Liger sets it in code; the flag alone applies Liger's defaults (all kernels and the fused loss).
    `accelerator_config` is among them: its JSON is parsed in TrainingArguments.__post_init__."""
    accel = accelerator_config(cfg)
    return ((" --use_liger_kernel True" if uses_liger(cfg) else "")
            + (" --torch_compile True" if cfg.torch_compile else "")
            + (f" --accelerator_config {shlex.quote(json.dumps(accel))}" if accel else ""))


def llamafactory_arguments(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"enable_liger_kernel": True} if uses_liger(cfg) else {}
    if cfg.torch_compile:
        out["torch_compile"] = True  # a Seq2SeqTrainingArguments field, parsed from the YAML as is
    if cfg.doc_len and cfg.stage is Stage.sft:
        out["neat_packing"] = True  # packs samples into cutoff_len, attention kept within each (implies packing)
    # a TrainingArguments field too; LLaMA-Factory's trainers keep the Trainer's inner loop, which reads it
    return out | accelerator_config_field(cfg)


def accelerate_notes(cfg: TrainConfig) -> list[str]:
    """What of the plan accelerate's config file cannot say, for its header."""
    out = []
    if uses_liger(cfg):
        kwargs = ", ".join(f"{k}={v}" for k, v in liger_kernel_config(cfg).items())
        out.append("Liger kernels: accelerate's config file has no Liger key. `ftplan run` and the Trainer apply them "
                   "to the model before training; an accelerate script of your own does so before accelerator."
                   "prepare, as the Trainer does (transformers/trainer.py): liger_kernel.transformers."
                   f"_apply_liger_kernel_to_instance(model=model, {kwargs}).")
    if cfg.torch_compile and cfg.engine is Engine.deepspeed:
        out.append("--torch-compile: accelerate launch passes no dynamo setting to a DeepSpeed run; `ftplan run` and "
                   "the Trainer flags compile the model (torch_compile), an accelerate script of your own passes "
                   'Accelerator(dynamo_backend="inductor").')
    if cfg.sync_each_batch:
        out.append("--sync-each-batch: accelerate's config file has no sync_each_batch key. `ftplan run` and "
                   "llamafactory.yaml set it in the Trainer's accelerator_config; an accelerate script of your own "
                   "that accumulates with accelerator.accumulate passes Accelerator(gradient_accumulation_plugin="
                   f"GradientAccumulationPlugin(num_steps={cfg.grad_accum}, sync_each_batch=True)), else its no_sync "
                   "keeps FSDP's unsharded gradients through accumulation, more memory than this plan.")
    return out


def trainer_flag_notes(cfg: TrainConfig) -> list[str]:
    """What of the plan a Trainer script's command line (trainer_cli_flags) cannot say, for launch.sh."""
    if not uses_liger(cfg) or liger_kernel_config(cfg) == LIGER_DEFAULTS:
        return []
    return [f"--use_liger_kernel alone applies all of Liger's kernels and its fused loss; this plan's part is "
            f"TrainingArguments(liger_kernel_config={liger_kernel_config(cfg)!r}), set in your script "
            "(the command line does not parse liger_kernel_config)."]


def activation_offload_note(cfg: TrainConfig) -> str | None:
    """How an emitted Trainer config or command line offloads activations beside `ftplan run`, None without offload.
    `ftplan run` wraps each training step in torch.autograd.graph.save_on_cpu (runner.run_common.offloading_trainer);
    the Trainer's `activation_checkpointing_kwargs={"offload": true}` wraps each checkpointed layer's call in it
    (transformers modeling_utils.py _activation_checkpointing_enable), and only under activation checkpointing."""
    if not cfg.activation_offload:
        return None
    run = ("activation offload: `ftplan run` keeps every tensor a training step saves in host memory "
           "(torch.autograd.graph.save_on_cpu around the step, runner/run_common.py offloading_trainer); ")
    if cfg.grad_ckpt is not GradCkpt.none:
        return run + ("the Trainer's activation_checkpointing_kwargs offload here keeps each checkpointed layer's "
                      "input there, the part the plan counts; the LM head's and the loss's saved tensors stay on "
                      "the GPU.")
    return run + ("the Trainer offloads only under activation checkpointing, so no Trainer field says it here: a "
                  "script of your own wraps Trainer.training_step in save_on_cpu(pin_memory=True) the same way.")


def llamafactory_notes(cfg: TrainConfig) -> list[str]:
    out = []
    if uses_liger(cfg) and not (cfg.kernels is Kernels.liger and cfg.cross_entropy is CrossEntropy.fused):
        out.append("LLaMA-Factory's enable_liger_kernel applies Liger's RMSNorm, SwiGLU, RoPE and fused loss "
                   "together; the plan chose only part of them (its memory is for that part).")
    if cfg.cross_entropy is CrossEntropy.chunked:
        out.append("LLaMA-Factory has no chunked cross-entropy: the plan's chunked loss runs as the standard one "
                   "here (more memory), or use --cross-entropy fused (enable_liger_kernel).")
    if cfg.activation_offload:
        out.append("LLaMA-Factory has no activation offloading: `ftplan run` applies it (save_on_cpu), or plan "
                   "without --activation-offload.")
    out += _document_notes(cfg)
    return out


def _document_notes(cfg: TrainConfig) -> list[str]:
    """What LLaMA-Factory 0.9.5 does with a plan's packed documents that the plan does not."""
    if not cfg.doc_len:
        return []
    if cfg.stage is not Stage.sft:
        return [f"LLaMA-Factory packs {cfg.stage.value} data across documents (neat_packing is SFT only, "
                f"hparams/parser.py): its attention spans the whole cutoff_len, more than this plan's --doc-len "
                f"{cfg.doc_len} counts."]
    out = [f"neat_packing: the plan assumes documents of {cfg.doc_len} tokens on average in each pack (--doc-len)."]
    if cfg.attn is not Attn.flash and not cfg.collator_mask:
        out.append("neat_packing under sdpa or eager hands every layer one 4-D mask per micro-batch from "
                   "LLaMA-Factory's collator; this plan counts transformers' mask converted in every layer instead "
                   "(TRL's packing): plan with --collator-mask for LLaMA-Factory's.")
    if cfg.attn is Attn.flash and cfg.micro_batch > 1:
        out.append(f"LLaMA-Factory 0.9.5 runs neat_packing under fa2 one pack per device (data/collator.py asserts a "
                   f"batch of 1): this plan's micro-batch {cfg.micro_batch} needs per_device_train_batch_size 1 there.")
    return out
