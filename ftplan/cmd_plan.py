"""`ftplan estimate`, `ftplan plan`, `ftplan models`, `ftplan gpus`."""

from __future__ import annotations

from rich.console import Console

from ftplan import options as o
from ftplan.cli import app
from planner.estimate import Limits
from planner.strategy import Method


def parse_choices(text: str | None, enum: type, option: str) -> tuple:
    from ftplan.answers import parse_choices as parse

    return parse(text, enum, option)


def limits_from(host_memory: float | None, nvme: float, headroom: float) -> Limits:
    from ftplan.answers import limits_from as limits

    return limits(host_memory, nvme, headroom)


@app.command()
def estimate(model: o.ModelOpt, gpus: o.GpusOpt, method: o.MethodOpt = Method.lora, lora_r: o.LoraROpt = 8,
             lora_alpha: o.LoraAlphaOpt = 16, lora_targets: o.LoraTargetsOpt = "all", quant: o.QuantOpt = None,
             precision: o.PrecisionOpt = o.Precision.bf16_mixed, optimizer: o.OptimizerOpt = o.Optimizer.adamw,
             zero: o.ZeroOpt = None, offload: o.OffloadOpt = o.Offload.none,
             offload_device: o.OffloadDeviceOpt = o.OffloadDevice.cpu, fsdp: o.FsdpOpt = None, tp: o.TpOpt = 1,
             pp: o.PpOpt = 1, sequence_parallel: o.SpOpt = False, micro_batch: o.MicroBatchOpt = 1,
             grad_accum: o.GradAccumOpt = 1, seq_len: o.SeqLenOpt = 2048, grad_ckpt: o.GradCkptOpt = o.GradCkpt.none,
             attn: o.AttnOpt = o.Attn.sdpa, stage: o.StageOpt = o.Stage.sft, freeze_layers: o.FreezeOpt = 0,
             rope_scaling: o.RopeScalingOpt = None, host_memory: o.HostMemOpt = None, nvme: o.NvmeOpt = 2048.0,
             headroom: o.HeadroomOpt = 0.0, json_out: o.JsonOpt = False, emit_dir: o.EmitOpt = None,
             force: o.ForceOpt = False, calibration: o.CalibrationOpt = None, tokens: o.TokensOpt = None,
             samples: o.SamplesOpt = None, epochs: o.EpochsOpt = 1.0,
             cross_entropy: o.CrossEntropyOpt = o.CrossEntropy.standard, kernels: o.KernelsOpt = o.Kernels.eager,
             activation_offload: o.ActivationOffloadOpt = False, fsdp_version: o.FsdpVersionOpt = 2,
             torch_compile: o.CompileOpt = False, bnb_version: o.BnbVersionOpt = "",
             frozen_fp32: o.FrozenFp32Opt = False, lora_dropout: o.LoraDropoutOpt = o.LORA_DROPOUT,
             kbit_prep: o.KbitPrepOpt = True) -> None:
    """Memory and speed of one configuration, with their breakdowns."""
    from ftplan.answers import estimate_answer

    answer = estimate_answer(
        model=model, gpus=gpus, method=method, lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets,
        quant=quant, precision=precision, optimizer=optimizer, zero=zero, offload=offload,
        offload_device=offload_device, fsdp=fsdp, tp=tp, pp=pp, sequence_parallel=sequence_parallel,
        micro_batch=micro_batch, grad_accum=grad_accum, seq_len=seq_len, grad_ckpt=grad_ckpt, attn=attn,
        stage=stage, freeze_layers=freeze_layers, rope_scaling=rope_scaling, host_memory=host_memory, nvme=nvme,
        headroom=headroom, calibration=calibration, tokens=tokens, samples=samples, epochs=epochs,
        cross_entropy=cross_entropy, kernels=kernels, activation_offload=activation_offload,
        fsdp_version=fsdp_version, torch_compile=torch_compile, bnb_version=bnb_version,
        frozen_fp32=frozen_fp32, lora_dropout=lora_dropout, kbit_prep=kbit_prep)
    est = answer.est
    emitted = None
    if emit_dir is not None:
        from ftplan.cmd_emit import emit_files

        emitted = emit_files(est, emit_dir, force=force)
    if json_out:
        from reports.fmt import print_json

        print_json(answer.json())
        return
    from reports.memory_report import estimate_view
    from reports.time_report import time_table

    Console().print(estimate_view(est))
    if est.time is not None:
        Console().print(time_table(est.time, f"Step time: {est.config}", answer.job))
    if emitted is not None:
        Console().print(emitted)


@app.command()
def plan(model: o.ModelOpt, gpus: o.GpusOpt, method: o.MethodsOpt = None, seq_len: o.SeqLenOpt = 2048,
         global_batch: o.GlobalBatchOpt = None, lora_r: o.LoraROpt = 8, lora_alpha: o.LoraAlphaOpt = 16,
         lora_targets: o.LoraTargetsOpt = "all", precision: o.PrecisionOpt = o.Precision.bf16_mixed,
         stage: o.StageOpt = o.Stage.sft, rope_scaling: o.RopeScalingOpt = None, host_memory: o.HostMemOpt = None,
         nvme: o.NvmeOpt = 2048.0, headroom: o.HeadroomOpt = 0.0, top: o.TopOpt = 3, all_plans: o.AllOpt = False,
         json_out: o.JsonOpt = False, emit_dir: o.EmitOpt = None, pick: o.PickOpt = 1, force: o.ForceOpt = False,
         calibration: o.CalibrationOpt = None, tokens: o.TokensOpt = None, samples: o.SamplesOpt = None,
         epochs: o.EpochsOpt = 1.0, optimizer: o.OptimizerOpt = o.Optimizer.adamw,
         optimizers: o.OptimizersOpt = None, attns: o.AttnsOpt = None,
         cross_entropy: o.CrossEntropyOpt = o.CrossEntropy.standard, kernels: o.KernelsOpt = o.Kernels.eager,
         activation_offload: o.ActivationOffloadOpt = False, fsdp_version: o.FsdpVersionOpt = 2,
         torch_compile: o.CompileOpt = False, bnb_version: o.BnbVersionOpt = "",
         frozen_fp32: o.FrozenFp32Opt = False, lora_dropout: o.LoraDropoutOpt = o.LORA_DROPOUT,
         kbit_prep: o.KbitPrepOpt = True,
         include_unrunnable: o.IncludeUnrunnableOpt = False) -> None:
    """Enumerate every valid strategy, keep those that fit, rank them by tokens/s (within 1%: simpler first;
    plans `ftplan run` executes first unless --include-unrunnable)."""
    from ftplan.answers import plan_answer
    from planner.errors import PlanError

    if emit_dir is None and pick != 1:
        raise PlanError("--pick chooses the plan to --emit: pass --emit DIR too")
    answer = plan_answer(model=model, gpus=gpus, method=method, seq_len=seq_len, global_batch=global_batch,
                         lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets, precision=precision,
                         stage=stage, rope_scaling=rope_scaling, host_memory=host_memory, nvme=nvme,
                         headroom=headroom, top=top, all_plans=all_plans, calibration=calibration, tokens=tokens,
                         samples=samples, epochs=epochs, optimizer=optimizer, optimizers=optimizers, attns=attns,
                         cross_entropy=cross_entropy, kernels=kernels, activation_offload=activation_offload,
                         fsdp_version=fsdp_version,
                         torch_compile=torch_compile, bnb_version=bnb_version,
                         frozen_fp32=frozen_fp32, lora_dropout=lora_dropout, kbit_prep=kbit_prep,
                         include_unrunnable=include_unrunnable)
    emitted = None
    if emit_dir is not None:
        from ftplan.cmd_emit import emit_pick

        emitted = emit_pick(answer.result, pick, emit_dir, force=force)
    if json_out:
        from reports.fmt import print_json

        print_json(answer.json())
        return
    from reports.plan_report import plan_view

    per_method = len(answer.result.plans) if all_plans else top
    Console().print(plan_view(answer.result, per_method, answer.job, runnable_first=not include_unrunnable))
    if emitted is not None:
        Console().print(emitted)


@app.command()
def models(json_out: o.JsonOpt = False) -> None:
    """The model catalog."""
    from planner.models import from_name, model_names
    from reports.catalog_report import models_json, models_table
    from reports.fmt import print_json

    rows = [from_name(n) for n in model_names()]
    if json_out:
        print_json(models_json(rows))
        return
    Console().print(models_table(rows))


@app.command()
def gpus(json_out: o.JsonOpt = False) -> None:
    """The GPU catalog (datasheet figures)."""
    from planner.gpus import GPUS
    from reports.catalog_report import gpus_json, gpus_table
    from reports.fmt import print_json

    if json_out:
        print_json(gpus_json(list(GPUS.values())))
        return
    Console().print(gpus_table(list(GPUS.values())))

