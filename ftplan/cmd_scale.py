"""`ftplan scale`: the best plan and its speed at 1, 2, 4, 8 GPUs, then whole nodes."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ftplan import options as o
from ftplan.cli import app
from planner.strategy import Method


@app.command()
def scale(model: o.ModelOpt, gpu: o.GpuOpt, max_gpus: o.MaxGpusOpt = 64, method: o.MethodOpt = Method.lora,
          seq_len: o.SeqLenOpt = 2048, global_batch: o.GlobalBatchOpt = None, lora_r: o.LoraROpt = 8,
          lora_alpha: o.LoraAlphaOpt = 16, lora_targets: o.LoraTargetsOpt = "all",
          precision: o.PrecisionOpt = o.Precision.bf16_mixed, stage: o.StageOpt = o.Stage.sft,
          rope_scaling: o.RopeScalingOpt = None, host_memory: o.HostMemOpt = None, nvme: o.NvmeOpt = 2048.0,
          headroom: o.HeadroomOpt = 0.0, calibration: o.CalibrationOpt = None,
          out: o.OutDirOpt = Path("ftplan-reports"), force: o.ForceOpt = False, json_out: o.JsonOpt = False,
          cross_entropy: o.CrossEntropyOpt = o.CrossEntropy.standard, kernels: o.KernelsOpt = o.Kernels.eager,
          activation_offload: o.ActivationOffloadOpt = False, fsdp_version: o.FsdpVersionOpt = 2,
          torch_compile: o.CompileOpt = False, bnb_version: o.BnbVersionOpt = "",
          frozen_fp32: o.FrozenFp32Opt = False, lora_dropout: o.LoraDropoutOpt = o.LORA_DROPOUT,
          kbit_prep: o.KbitPrepOpt = True) -> None:
    """Speedup and scaling efficiency against GPU count; writes a PNG chart and a JSON file to --out."""
    import json

    from ftplan.answers import scale_answer
    from planner.atomic import atomic_files
    from reports.charts import scaling_chart_png
    from reports.scale_report import scale_view

    answer = scale_answer(model=model, gpu=gpu, max_gpus=max_gpus, method=method, seq_len=seq_len,
                          global_batch=global_batch, lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets,
                          precision=precision, stage=stage, rope_scaling=rope_scaling, host_memory=host_memory,
                          nvme=nvme, headroom=headroom, calibration=calibration, cross_entropy=cross_entropy,
                          kernels=kernels, activation_offload=activation_offload, fsdp_version=fsdp_version,
                          torch_compile=torch_compile, bnb_version=bnb_version,
                          frozen_fp32=frozen_fp32, lora_dropout=lora_dropout, kbit_prep=kbit_prep)
    data = answer.json()
    stem = f"scale-{answer.model}-{answer.gpu}-{method.value}"
    names = [f"{stem}.png", f"{stem}.json"]
    with atomic_files(out, names, force=force) as stage_dir:
        scaling_chart_png(answer.result, stage_dir / names[0], title=f"{answer.model} {method.value} on {answer.gpu}")
        (stage_dir / names[1]).write_text(json.dumps(data, indent=2) + "\n")
    if json_out:
        from reports.fmt import print_json

        print_json(data)
        return
    Console().print(scale_view(answer.result, model=answer.model, gpu=answer.gpu, method=method.value,
                               files=[str(out / n) for n in names]))
