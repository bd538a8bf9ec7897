"""`ftplan estimate`, `ftplan plan`, `ftplan models`, `ftplan gpus`."""

from __future__ import annotations

from rich.console import Console

from ftplan import options as o
from ftplan.cli import app
from planner.build import build_config
from planner.estimate import Limits
from planner.strategy import Method


def limits_from(host_memory: float | None, nvme: float, headroom: float) -> Limits:
    from planner.errors import PlanError

    if host_memory is not None and host_memory <= 0:
        raise PlanError(f"--host-memory must be a positive number of GiB, got {host_memory:g}")
    if nvme < 0:
        raise PlanError(f"--nvme must not be negative, got {nvme:g}")
    return Limits(headroom_fraction=headroom,
                  host_bytes_per_node=None if host_memory is None else host_memory * 2**30,
                  nvme_bytes_per_node=nvme * 2**30)


@app.command()
def estimate(model: o.ModelOpt, gpus: o.GpusOpt, method: o.MethodOpt = Method.lora, lora_r: o.LoraROpt = 8,
             lora_alpha: o.LoraAlphaOpt = 16, lora_targets: o.LoraTargetsOpt = "all", quant: o.QuantOpt = None,
             precision: o.PrecisionOpt = o.Precision.bf16_mixed, optimizer: o.OptimizerOpt = o.Optimizer.adamw,
             zero: o.ZeroOpt = None, offload: o.OffloadOpt = o.Offload.none,
             offload_device: o.OffloadDeviceOpt = o.OffloadDevice.cpu, fsdp: o.FsdpOpt = None, tp: o.TpOpt = 1,
             pp: o.PpOpt = 1, sequence_parallel: o.SpOpt = False, micro_batch: o.MicroBatchOpt = 1,
             grad_accum: o.GradAccumOpt = 1, seq_len: o.SeqLenOpt = 2048, grad_ckpt: o.GradCkptOpt = o.GradCkpt.none,
             attn: o.AttnOpt = o.Attn.sdpa, stage: o.StageOpt = o.Stage.sft, freeze_layers: o.FreezeOpt = 0,
             host_memory: o.HostMemOpt = None, nvme: o.NvmeOpt = 2048.0, headroom: o.HeadroomOpt = 0.0,
             json_out: o.JsonOpt = False, emit_dir: o.EmitOpt = None, force: o.ForceOpt = False,
             calibration: o.CalibrationOpt = None, tokens: o.TokensOpt = None, samples: o.SamplesOpt = None,
             epochs: o.EpochsOpt = 1.0,
             cross_entropy: o.CrossEntropyOpt = o.CrossEntropy.standard, kernels: o.KernelsOpt = o.Kernels.eager,
             activation_offload: o.ActivationOffloadOpt = False, fsdp_version: o.FsdpVersionOpt = 2) -> None:
    """Memory and speed of one configuration, with their breakdowns."""
    from planner.calibration import load_calibration
    from planner.estimate import estimate as run_estimate
    from planner.estimate import estimate_to_dict
    from planner.timing import job_size, job_time

    cfg = build_config(model=model, gpus=gpus, method=method, lora_r=lora_r, lora_alpha=lora_alpha,
                       lora_targets=lora_targets, quant=quant, precision=precision, optimizer=optimizer, zero=zero,
                       offload=offload, offload_device=offload_device, fsdp=fsdp, tp=tp, pp=pp,
                       sequence_parallel=sequence_parallel, micro_batch=micro_batch, grad_accum=grad_accum,
                       seq_len=seq_len, grad_ckpt=grad_ckpt, attn=attn, stage=stage, freeze_layers=freeze_layers,
                       **o.switches(cross_entropy, kernels, activation_offload, fsdp_version))
    size = job_size(tokens, samples, epochs)
    est = run_estimate(cfg, limits_from(host_memory, nvme, headroom), load_calibration(calibration))
    job = job_time(est.time, cfg, size) if size is not None and est.time is not None else None
    emitted = None
    if emit_dir is not None:
        from ftplan.cmd_emit import emit_files

        emitted = emit_files(est, emit_dir, force=force)
    if json_out:
        from planner.timing import job_to_dict
        from reports.fmt import print_json

        print_json({**estimate_to_dict(est), **({"job": job_to_dict(job)} if job else {})})
        return
    from reports.memory_report import estimate_view
    from reports.time_report import time_table

    Console().print(estimate_view(est))
    if est.time is not None:
        Console().print(time_table(est.time, f"Step time: {cfg}", job))
    if emitted is not None:
        Console().print(emitted)


@app.command()
def plan(model: o.ModelOpt, gpus: o.GpusOpt, method: o.MethodsOpt = None, seq_len: o.SeqLenOpt = 2048,
         global_batch: o.GlobalBatchOpt = None, lora_r: o.LoraROpt = 8, lora_alpha: o.LoraAlphaOpt = 16,
         lora_targets: o.LoraTargetsOpt = "all", precision: o.PrecisionOpt = o.Precision.bf16_mixed,
         stage: o.StageOpt = o.Stage.sft, host_memory: o.HostMemOpt = None, nvme: o.NvmeOpt = 2048.0,
         headroom: o.HeadroomOpt = 0.0, top: o.TopOpt = 3, json_out: o.JsonOpt = False,
         emit_dir: o.EmitOpt = None, pick: o.PickOpt = 1, force: o.ForceOpt = False,
         calibration: o.CalibrationOpt = None, tokens: o.TokensOpt = None, samples: o.SamplesOpt = None,
         epochs: o.EpochsOpt = 1.0,
         cross_entropy: o.CrossEntropyOpt = o.CrossEntropy.standard, kernels: o.KernelsOpt = o.Kernels.eager,
             activation_offload: o.ActivationOffloadOpt = False, fsdp_version: o.FsdpVersionOpt = 2) -> None:
    """Enumerate every valid strategy, keep those that fit, rank them by tokens/s."""
    from planner.calibration import load_calibration
    from planner.errors import PlanError
    from planner.search import SearchSpace
    from planner.search import plan as run_plan
    from planner.timing import job_size, job_time

    if global_batch is not None and global_batch < 1:
        raise PlanError(f"--global-batch must be a positive integer, got {global_batch}")
    if top < 1:
        raise PlanError(f"--top must be a positive integer, got {top}")
    base = build_config(model=model, gpus=gpus, seq_len=seq_len, lora_r=lora_r, lora_alpha=lora_alpha,
                        lora_targets=lora_targets, precision=precision, stage=stage, check=False,
                        **o.switches(cross_entropy, kernels, activation_offload, fsdp_version))
    if seq_len > base.model.max_seq_len:
        raise PlanError(f"--seq-len {seq_len} exceeds the {base.model.max_seq_len} positions of {base.model.name}")
    space = SearchSpace(methods=tuple(dict.fromkeys(method)) if method else SearchSpace().methods,
                        global_batch=global_batch)
    if emit_dir is None and pick != 1:
        raise PlanError("--pick chooses the plan to --emit: pass --emit DIR too")
    size = job_size(tokens, samples, epochs)
    result = run_plan(base, space, limits_from(host_memory, nvme, headroom), load_calibration(calibration))
    best = result.plans[0] if result.plans else None
    job = job_time(best.time, best.config, size) if size is not None and best and best.time else None
    emitted = None
    if emit_dir is not None:
        from ftplan.cmd_emit import emit_pick

        emitted = emit_pick(result, pick, emit_dir, force=force)
    if json_out:
        from planner.timing import job_to_dict
        from reports.fmt import print_json
        from reports.plan_report import plans_json

        data = plans_json(result, top)
        if size is not None:
            for entry, est in zip(data["plans"], _chosen(result, top), strict=True):
                entry["job"] = job_to_dict(job_time(est.time, est.config, size))
        print_json(data)
        return
    from reports.plan_report import plan_view

    Console().print(plan_view(result, top, job))
    if emitted is not None:
        Console().print(emitted)


@app.command()
def models(json_out: o.JsonOpt = False) -> None:
    """The model catalog."""
    from planner.models import from_name, model_names
    from planner.params import total_params

    rows = [from_name(n) for n in model_names()]
    if json_out:
        from reports.fmt import print_json

        print_json([{"name": m.name, "params": total_params(m), "layers": m.num_layers, "hidden": m.hidden_size,
                     "heads": m.num_heads, "kv_heads": m.num_kv_heads, "vocab": m.vocab_size,
                     "experts": m.num_experts, "source": m.source} for m in rows])
        return
    from rich.table import Table

    from reports.fmt import params

    table = Table(title="Models (aliases: 7b, 13b, 70b = Llama-2)", title_justify="left")
    for col in ("name", "params", "layers", "hidden", "heads/kv", "vocab", "experts"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for m in rows:
        table.add_row(m.name, params(total_params(m)), str(m.num_layers), str(m.hidden_size),
                      f"{m.num_heads}/{m.num_kv_heads}", f"{m.vocab_size:,}",
                      f"{m.experts_per_token}/{m.num_experts}" if m.is_moe else "")
    Console().print(table)


@app.command()
def gpus(json_out: o.JsonOpt = False) -> None:
    """The GPU catalog (datasheet figures)."""
    from planner.gpus import GPUS

    if json_out:
        import dataclasses

        from reports.fmt import print_json

        print_json([dataclasses.asdict(g) for g in GPUS.values()])
        return
    from rich.table import Table

    table = Table(title="GPUs (dense peaks; link bandwidth per GPU, one direction)", title_justify="left")
    for col in ("name", "memory GiB", "bf16 TF/s", "fp32 TF/s", "HBM GB/s", "intra-node", "GB/s", "inter-node GB/s"):
        table.add_column(col, justify="left" if col in ("name", "intra-node") else "right")
    for g in GPUS.values():
        table.add_row(g.name, f"{g.hbm_bytes / 2**30:.1f}", f"{g.peak_bf16_flops_per_s / 1e12:.1f}",
                      f"{g.peak_fp32_flops_per_s / 1e12:.1f}", f"{g.hbm_bytes_per_s / 1e9:.0f}", g.intra_node_link,
                      f"{g.intra_node_bytes_per_s / 1e9:.0f}", f"{g.inter_node_bytes_per_s / 1e9:.1f}")
    Console().print(table)


def _chosen(result, top: int) -> list:
    """The plans `plans_json` lists, in its order: the best `top` per method."""
    shown: dict = {}
    out = []
    for est in result.plans:
        if shown.get(est.config.method, 0) < top:
            shown[est.config.method] = shown.get(est.config.method, 0) + 1
            out.append(est)
    return out
