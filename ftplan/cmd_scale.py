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
          host_memory: o.HostMemOpt = None, nvme: o.NvmeOpt = 2048.0, headroom: o.HeadroomOpt = 0.0,
          calibration: o.CalibrationOpt = None, out: o.OutDirOpt = Path("ftplan-reports"),
          force: o.ForceOpt = False, json_out: o.JsonOpt = False,
          cross_entropy: o.CrossEntropyOpt = o.CrossEntropy.standard, kernels: o.KernelsOpt = o.Kernels.eager,
          activation_offload: o.ActivationOffloadOpt = False, fsdp_version: o.FsdpVersionOpt = 2) -> None:
    """Speedup and scaling efficiency against GPU count; writes a PNG chart and a JSON file to --out."""
    from ftplan.cmd_plan import limits_from
    from planner.atomic import atomic_files
    from planner.build import build_config
    from planner.calibration import load_calibration
    from planner.errors import PlanError
    from planner.gpus import gpu_from_name
    from planner.scaling import gpu_counts
    from planner.scaling import scale as run_scale
    from planner.search import SearchSpace
    from reports.scale_report import scale_json, scale_view

    spec = gpu_from_name(gpu)
    gpu_counts(max_gpus, spec.gpus_per_node)  # checks --max-gpus before any work
    if global_batch is not None and global_batch < 1:
        raise PlanError(f"--global-batch must be a positive integer, got {global_batch}")
    base = build_config(model=model, gpus=f"1x{spec.name}", method=method, seq_len=seq_len, lora_r=lora_r,
                        lora_alpha=lora_alpha, lora_targets=lora_targets, precision=precision, stage=stage,
                        check=False, **o.switches(cross_entropy, kernels, activation_offload, fsdp_version))
    if seq_len > base.model.max_seq_len:
        raise PlanError(f"--seq-len {seq_len} exceeds the {base.model.max_seq_len} positions of {base.model.name}")
    limits = limits_from(host_memory, nvme, headroom)
    cal = load_calibration(calibration)
    result = run_scale(base, max_gpus, SearchSpace(methods=(method,), global_batch=global_batch), limits, cal)
    data = scale_json(result, model=base.model.name, gpu=spec.name, method=method.value, seq_len=seq_len)
    stem = f"scale-{base.model.name}-{spec.name}-{method.value}"
    names = [f"{stem}.png", f"{stem}.json"]
    import json

    from reports.charts import scaling_chart_png

    with atomic_files(out, names, force=force) as stage_dir:
        scaling_chart_png(result, stage_dir / names[0], title=f"{base.model.name} {method.value} on {spec.name}")
        (stage_dir / names[1]).write_text(json.dumps(data, indent=2) + "\n")
    if json_out:
        from reports.fmt import print_json

        print_json(data)
        return
    Console().print(scale_view(result, model=base.model.name, gpu=spec.name, method=method.value,
                               files=[str(out / n) for n in names]))
