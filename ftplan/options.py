"""Options shared by every command, one vocabulary (typer Annotated types; enums are the choices)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner.strategy import (
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

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Catalog name or alias (7b, llama-3-8b), a config.json, or a model directory."),
]
GpusOpt = Annotated[
    str,
    typer.Option("--gpus", "-g", help="COUNTxTYPE or NODESxPER_NODExTYPE: 8xA800, 2x8xH100, 2xCPU."),
]
MethodOpt = Annotated[Method, typer.Option(help="Fine-tuning method.")]
MethodsOpt = Annotated[
    list[Method] | None,
    typer.Option("--method", help="Methods to plan (repeat); default all three."),
]
LoraROpt = Annotated[int, typer.Option(help="LoRA rank.")]
LoraAlphaOpt = Annotated[int, typer.Option(help="LoRA alpha.")]
LoraTargetsOpt = Annotated[str, typer.Option(help="Comma-separated LoRA target modules, or 'all'.")]
QuantOpt = Annotated[Quant | None, typer.Option(help="Base-weight quantization (QLoRA); default nf4 for qlora.")]
PrecisionOpt = Annotated[Precision, typer.Option(help="Precision: fp32 master under *-mixed, none under bf16-true.")]
OptimizerOpt = Annotated[Optimizer, typer.Option(help="Optimizer.")]
ZeroOpt = Annotated[int | None, typer.Option("--zero", min=0, max=3, help="DeepSpeed ZeRO stage (0-3).")]
OffloadOpt = Annotated[Offload, typer.Option(help="Offload optimizer states, or everything.")]
OffloadDeviceOpt = Annotated[OffloadDevice, typer.Option(help="Where offloaded states go.")]
FsdpOpt = Annotated[FsdpStrategy | None, typer.Option(help="Use FSDP with this sharding strategy.")]
TpOpt = Annotated[int, typer.Option(help="Tensor-parallel degree.")]
PpOpt = Annotated[int, typer.Option(help="Pipeline-parallel degree.")]
SpOpt = Annotated[
    bool,
    typer.Option("--sequence-parallel/--no-sequence-parallel", help="Sequence parallelism with TP."),
]
MicroBatchOpt = Annotated[int, typer.Option(help="Sequences per GPU per forward.")]
GradAccumOpt = Annotated[int, typer.Option(help="Gradient-accumulation steps.")]
SeqLenOpt = Annotated[int, typer.Option(help="Tokens per sequence.")]
GradCkptOpt = Annotated[GradCkpt, typer.Option(help="Activation checkpointing.")]
AttnOpt = Annotated[Attn, typer.Option(help="Attention implementation.")]
StageOpt = Annotated[Stage, typer.Option(help="Training stage.")]
FreezeOpt = Annotated[int, typer.Option(help="Full method: freeze the first N decoder layers.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
HostMemOpt = Annotated[
    float | None,
    typer.Option("--host-memory", help="Host RAM per node in GiB (default: 2x the node's GPU memory)."),
]
NvmeOpt = Annotated[float, typer.Option("--nvme", help="NVMe space per node in GiB for ZeRO-Infinity.")]
HeadroomOpt = Annotated[float, typer.Option(min=0.0, max=0.9, help="Fraction of GPU memory to keep free.")]
GlobalBatchOpt = Annotated[
    int | None,
    typer.Option(help="Sequences per optimizer step, held fixed (default 8 per GPU)."),
]
CalibrationOpt = Annotated[Path | None, typer.Option(help="Calibration JSON written by `ftplan profile`.")]
TopOpt = Annotated[int, typer.Option(help="Plans to show per method.")]
TokensOpt = Annotated[float | None, typer.Option(
    "--tokens", help="Job size in tokens per epoch (packed into --seq-len sequences): job time and GPU-hours.")]
SamplesOpt = Annotated[float | None, typer.Option(
    "--samples", help="Job size in sequences per epoch: job time and GPU-hours.")]
EpochsOpt = Annotated[float, typer.Option("--epochs", help="Passes over --tokens / --samples.")]
GpuOpt = Annotated[str, typer.Option("--gpu", help="GPU type from the catalog (ftplan gpus), e.g. A800.")]
MaxGpusOpt = Annotated[int, typer.Option(
    "--max-gpus", help="Largest GPU count: 1, 2, 4, 8, then whole nodes up to it.")]
OutDirOpt = Annotated[Path, typer.Option("--out", help="Directory for the report files (PNG chart and JSON).")]
EmitOpt = Annotated[Path | None, typer.Option(
    "--emit", help="Write plan.json, ds_config, accelerate.yaml, launch.sh and LLaMA-Factory YAML into this folder.")]
PickOpt = Annotated[int, typer.Option(
    "--pick", help="With --emit: write the plan ranked N (the # column) instead of the best.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Overwrite files that already exist in the --emit directory.")]
CrossEntropyOpt = Annotated[CrossEntropy, typer.Option(
    "--cross-entropy", help="Loss: standard (transformers, fp32 logits), chunked (torchtune's chunked loss), "
                            "fused (Liger's fused linear cross-entropy).")]
KernelsOpt = Annotated[Kernels, typer.Option(
    "--kernels", help="eager (transformers' modules) or liger (Liger's fused RMSNorm, SwiGLU, RoPE).")]
ActivationOffloadOpt = Annotated[bool, typer.Option(
    "--activation-offload/--no-activation-offload", help="Keep saved activations (checkpoints) in host memory.")]
FsdpVersionOpt = Annotated[int, typer.Option(
    "--fsdp-version", min=1, max=2, help="FSDP2 (per-parameter, accelerate fsdp_version: 2) or FSDP1.")]


def switches(cross_entropy: CrossEntropy, kernels: Kernels, activation_offload: bool,
             fsdp_version: int) -> dict:
    """The memory switches as build_config keyword arguments."""
    return {"cross_entropy": cross_entropy, "kernels": kernels, "activation_offload": activation_offload,
            "fsdp_version": fsdp_version}
