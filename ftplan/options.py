"""Options shared by every command, one vocabulary (typer Annotated types; enums are the choices)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from planner.strategy import (
    LORA_DROPOUT,
    Attn,
    CrossEntropy,
    FsdpStrategy,
    GradCkpt,
    Kernels,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
    Stage,
)

# --help groups the options in these panels (rich_help_panel), so a long command reads at 80 columns
_model = partial(typer.Option, rich_help_panel="Model")
_hardware = partial(typer.Option, rich_help_panel="Hardware")
_method = partial(typer.Option, rich_help_panel="Method")
_parallelism = partial(typer.Option, rich_help_panel="Parallelism")
_batch = partial(typer.Option, rich_help_panel="Batch")
_memory = partial(typer.Option, rich_help_panel="Memory")
_output = partial(typer.Option, rich_help_panel="Output")

ModelOpt = Annotated[
    str,
    _model("--model", "-m", help="Catalog name or alias (7b, llama-3-8b), a config.json, or a model directory."),
]
GpusOpt = Annotated[
    str,
    _hardware("--gpus", "-g", help="COUNTxTYPE or NODESxPER_NODExTYPE: 8xA800, 2x8xH100, 2xCPU."),
]
MethodOpt = Annotated[Method, _method(help="Fine-tuning method.")]
MethodsOpt = Annotated[
    list[Method] | None,
    _method("--method", help="Methods to plan (repeat); default all three."),
]
LoraROpt = Annotated[int, _method(help="LoRA rank.")]
LoraAlphaOpt = Annotated[int, _method(help="LoRA alpha.")]
LoraTargetsOpt = Annotated[str, _method(help="Comma-separated LoRA target modules, or 'all'.")]
LoraDropoutOpt = Annotated[float, _method(
    "--lora-dropout", help="LoRA dropout (peft lora_dropout): above 0 every adapted linear keeps a dropped-out "
                           "copy of its input and a mask for backward.")]
QuantOpt = Annotated[Quant | None, _method(help="Base-weight quantization (QLoRA); default nf4 for qlora.")]
PrecisionOpt = Annotated[Precision, _method(help="Precision: fp32 master under *-mixed, none under bf16-true.")]
OptimizerOpt = Annotated[Optimizer, _method(help="Optimizer.")]
OptimizersOpt = Annotated[str | None, _method(
    "--optimizers", help="Search these optimizers (comma-separated, e.g. adamw,adamw_8bit) instead of --optimizer.")]
AttnsOpt = Annotated[str | None, _memory(
    "--attns", help="Search these attention implementations (comma-separated, e.g. sdpa,eager) instead of sdpa.")]
ZeroOpt = Annotated[int | None, _parallelism("--zero", min=0, max=3, help="DeepSpeed ZeRO stage (0-3).")]
OffloadOpt = Annotated[Offload, _parallelism(help="Offload optimizer states, or everything.")]
OffloadDeviceOpt = Annotated[OffloadDevice, _parallelism(help="Where offloaded states go.")]
FsdpOpt = Annotated[FsdpStrategy | None, _parallelism(help="Use FSDP with this sharding strategy.")]
TpOpt = Annotated[int, _parallelism(help="Tensor-parallel degree.")]
PpOpt = Annotated[int, _parallelism(help="Pipeline-parallel degree.")]
SpOpt = Annotated[
    bool,
    _parallelism("--sequence-parallel/--no-sequence-parallel", help="Sequence parallelism with TP."),
]
MicroBatchOpt = Annotated[int, _batch(help="Sequences per GPU per forward.")]
GradAccumOpt = Annotated[int, _batch(help="Gradient-accumulation steps.")]
SeqLenOpt = Annotated[int, _batch(help="Tokens per sequence.")]
GradCkptOpt = Annotated[GradCkpt, _memory(help="Activation checkpointing.")]
AttnOpt = Annotated[Attn, _memory(help="Attention implementation.")]
StageOpt = Annotated[Stage, _model(help="Training stage.")]
FreezeOpt = Annotated[int, _method(help="Full method: freeze the first N decoder layers.")]
JsonOpt = Annotated[bool, _output("--json", help="Print machine-readable JSON.")]
HostMemOpt = Annotated[
    float | None,
    _memory("--host-memory", help="Host RAM per node in GiB (default: 2x the node's GPU memory)."),
]
NvmeOpt = Annotated[float, _memory("--nvme", help="NVMe space per node in GiB for ZeRO-Infinity.")]
HeadroomOpt = Annotated[float, _memory(min=0.0, max=0.9, help="Fraction of GPU memory to keep free.")]
GlobalBatchOpt = Annotated[
    int | None,
    _batch(help="Sequences per optimizer step, held fixed (default 8 per GPU)."),
]
CalibrationOpt = Annotated[Path | None, _hardware(help="Calibration JSON written by `ftplan profile`.")]
TopOpt = Annotated[int, _output(help="Plans to show per method.")]
TokensOpt = Annotated[float | None, _batch(
    "--tokens", help="Job size in tokens per epoch (packed into --seq-len sequences): job time and GPU-hours.")]
SamplesOpt = Annotated[float | None, _batch(
    "--samples", help="Job size in sequences per epoch: job time and GPU-hours.")]
EpochsOpt = Annotated[float, _batch("--epochs", help="Passes over --tokens / --samples.")]
GpuOpt = Annotated[str, _hardware("--gpu", help="GPU type from the catalog (ftplan gpus), e.g. A800.")]
MaxGpusOpt = Annotated[int, _hardware(
    "--max-gpus", help="Largest GPU count: 1, 2, 4, 8, then whole nodes up to it.")]
OutDirOpt = Annotated[Path, _output("--out", help="Directory for the report files (PNG chart and JSON).")]
EmitOpt = Annotated[Path | None, _output(
    "--emit", help="Write plan.json, ds_config, accelerate.yaml, launch.sh and LLaMA-Factory YAML into this folder.")]
PickOpt = Annotated[int, _output(
    "--pick", help="With --emit: write the plan ranked N (the # column) instead of the best.")]
IncludeUnrunnableOpt = Annotated[bool, _output(
    "--include-unrunnable", help="Rank every plan by speed, also those `ftplan run` does not execute "
                                 "(default: the winner is the best plan it runs).")]
ForceOpt = Annotated[bool, _output(
    "--force", help="Overwrite files that already exist in the --emit directory.")]
RopeScalingOpt = Annotated[str | None, typer.Option(
    "--rope-scaling", help="TYPE:FACTOR (linear, dynamic, yarn, llama3), e.g. linear:2.0: positions x FACTOR.")]
AllOpt = Annotated[bool, typer.Option("--all", help="List every fitting plan, not the best --top per method.")]
CrossEntropyOpt = Annotated[CrossEntropy, typer.Option(
    "--cross-entropy", help="Loss: standard (transformers, fp32 logits), chunked (torchtune's chunked loss), "
                            "fused (Liger's fused linear cross-entropy).")]
KernelsOpt = Annotated[Kernels, typer.Option(
    "--kernels", help="eager (transformers' modules) or liger (Liger's fused RMSNorm, SwiGLU, RoPE).")]
ActivationOffloadOpt = Annotated[bool, typer.Option(
    "--activation-offload/--no-activation-offload", help="Keep saved activations (checkpoints) in host memory.")]
FsdpVersionOpt = Annotated[int, typer.Option(
    "--fsdp-version", min=1, max=2, help="FSDP2 (per-parameter, accelerate fsdp_version: 2) or FSDP1.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile/--no-compile", help="torch.compile (Trainer torch_compile): fewer saved activations, measured.")]
BnbVersionOpt = Annotated[str, typer.Option(
    "--bnb-version", help="bitsandbytes release QLoRA runs with, e.g. 0.41.1 (before 0.43.2 each 4-bit linear "
                          "kept its input for backward); default: a current release.")]
FrozenFp32Opt = Annotated[bool, typer.Option(
    "--frozen-fp32/--no-frozen-fp32", help="Frozen weights loaded in fp32 (from_pretrained without torch_dtype); "
                                           "DDP and FSDP keep them so, DeepSpeed casts them to 16 bits.")]

KbitPrepOpt = Annotated[bool, typer.Option(
    "--kbit-prep/--no-kbit-prep", help="QLoRA: peft's prepare_model_for_kbit_training runs (TRL, the QLoRA "
                                       "script, MedicalGPT, ftplan run; not LLaMA-Factory): fp32 non-quantized "
                                       "weights and residual stream under DDP autocast.")]


def switches(cross_entropy: CrossEntropy, kernels: Kernels, activation_offload: bool,
             fsdp_version: int, torch_compile: bool = False, bnb_version: str = "",
             frozen_fp32: bool = False, lora_dropout: float = LORA_DROPOUT, kbit_prep: bool = True) -> dict:
    """The memory switches as build_config keyword arguments."""
    return {"cross_entropy": cross_entropy, "kernels": kernels, "activation_offload": activation_offload,
            "fsdp_version": fsdp_version, "torch_compile": torch_compile, "bnb_version": bnb_version,
            "frozen_fp32": frozen_fp32, "lora_dropout": lora_dropout, "kbit_prep": kbit_prep}
