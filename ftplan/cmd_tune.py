"""`ftplan tune`: an Optuna search over the plan space, analytical, then short real trials with --measure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftplan import options as o
from ftplan.cli import app
from planner.strategy import Attn, Engine, GradCkpt, Offload, Optimizer

TrialsOpt = Annotated[int | None, typer.Option(help="Trials: sampled plans (default: every valid plan, "
                                                     "exhaustively); with --measure, real trials (default 8).")]
MeasureOpt = Annotated[bool, typer.Option("--measure", help="Run short real trials of the best analytical plans.")]
TopOpt = Annotated[int | None, typer.Option("--top", help="--measure: best analytical plans run first "
                                                          "(default half the trials); TPE proposes the rest.")]
StorageOpt = Annotated[str | None, typer.Option(help="SQLAlchemy URL of the study storage, or 'memory' "
                                                     "(default sqlite:///ftplan-tune.db).")]
StudyOpt = Annotated[str | None, typer.Option(help="Study name (default from model, GPUs, global batch, seq-len).")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.")]
EmitOpt = Annotated[Path | None, typer.Option(help="Write the winner's files (plan.json, ds_config.json, ...) here.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite files in --emit.")]
SeedOpt = Annotated[int, typer.Option(help="Sampler seed.")]
EnginesOpt = Annotated[list[Engine] | None, typer.Option("--engine", help="Engines to search (repeat).")]
ZerosOpt = Annotated[list[int] | None, typer.Option("--zero", min=0, max=3, help="ZeRO stages to search (repeat; "
                                                                                 "DeepSpeed only).")]
OffloadsOpt = Annotated[list[Offload] | None, typer.Option("--offload", help="Offload settings to search (repeat).")]
MicroBatchesOpt = Annotated[list[int] | None, typer.Option("--micro-batch", help="Micro-batches to search (repeat).")]
CkptsOpt = Annotated[list[GradCkpt] | None, typer.Option("--grad-ckpt", help="Checkpointing to search (repeat).")]
AttnsOpt = Annotated[list[Attn] | None, typer.Option("--attn", help="Attention implementations (repeat).")]
OptimizersOpt = Annotated[list[Optimizer] | None, typer.Option("--optimizer", help="Optimizers (repeat).")]
TpsOpt = Annotated[list[int] | None, typer.Option("--tp", help="TP degrees (repeat; default powers of two).")]
PpsOpt = Annotated[list[int] | None, typer.Option("--pp", help="PP degrees (repeat; default powers of two).")]
VirtualOpt = Annotated[list[int] | None, typer.Option("--virtual-stages", help="Interleaved virtual stages per "
                                                                             "pipeline rank (repeat; default 1).")]
TrialStepsOpt = Annotated[int, typer.Option(help="--measure: timed optimizer steps per trial (after one warm-up).")]
TrialTimeoutOpt = Annotated[float, typer.Option(help="--measure: seconds before a trial counts as hung.")]


def _positive(name: str, values: list[int] | None) -> tuple[int, ...] | None:
    from planner.errors import PlanError

    if values is None:
        return None
    if any(v < 1 for v in values):
        raise PlanError(f"{name} must be positive integers, got {values}")
    return tuple(dict.fromkeys(values))


@app.command()
def tune(model: o.ModelOpt, gpus: o.GpusOpt, method: o.MethodsOpt = None, trials: TrialsOpt = None,
         measure: MeasureOpt = False, top: TopOpt = None, storage: StorageOpt = None, study: StudyOpt = None,
         timeout: TimeoutOpt = None, emit: EmitOpt = None, force: ForceOpt = False, seq_len: o.SeqLenOpt = 2048,
         global_batch: o.GlobalBatchOpt = None, engine: EnginesOpt = None, zero: ZerosOpt = None,
         offload: OffloadsOpt = None, micro_batch: MicroBatchesOpt = None, grad_ckpt: CkptsOpt = None,
         attn: AttnsOpt = None, optimizer: OptimizersOpt = None, tp: TpsOpt = None, pp: PpsOpt = None,
         virtual_stages: VirtualOpt = None, lora_r: o.LoraROpt = 8, lora_alpha: o.LoraAlphaOpt = 16,
         lora_targets: o.LoraTargetsOpt = "all", precision: o.PrecisionOpt = o.Precision.bf16_mixed,
         stage: o.StageOpt = o.Stage.sft, host_memory: o.HostMemOpt = None, nvme: o.NvmeOpt = 2048.0,
         headroom: o.HeadroomOpt = 0.0, calibration: o.CalibrationOpt = None, trial_steps: TrialStepsOpt = 3,
         trial_timeout: TrialTimeoutOpt = 300.0, seed: SeedOpt = 0, json_out: o.JsonOpt = False,
         cross_entropy: o.CrossEntropyOpt = o.CrossEntropy.standard, kernels: o.KernelsOpt = o.Kernels.eager,
         activation_offload: o.ActivationOffloadOpt = False, fsdp_version: o.FsdpVersionOpt = 2) -> None:
    """Autotune: search the plan space with Optuna (time model), optionally with short real trials."""
    from rich.console import Console

    from ftplan.cmd_plan import limits_from
    from planner.build import build_config
    from planner.calibration import load_calibration
    from planner.errors import PlanError
    from planner.search import SearchSpace
    from planner.strategy import ZeroStage
    from planner.tune_space import Filters, build_space
    from runner.tune import TuneOptions, quiet_optuna
    from runner.tune import tune as run_tune

    for name, value in (("--trials", trials), ("--top", top), ("--global-batch", global_batch),
                        ("--trial-steps", trial_steps)):
        if value is not None and value < 1:
            raise PlanError(f"{name} must be a positive integer, got {value}")
    if timeout is not None and timeout <= 0:
        raise PlanError(f"--timeout must be positive, got {timeout}")
    if emit is not None and not force and (emit / "plan.json").exists():
        raise PlanError(f"{emit / 'plan.json'} exists; pass --force to overwrite")
    base = build_config(model=model, gpus=gpus, seq_len=seq_len, lora_r=lora_r, lora_alpha=lora_alpha,
                        lora_targets=lora_targets, precision=precision, stage=stage, check=False,
                        **o.switches(cross_entropy, kernels, activation_offload, fsdp_version))
    if seq_len > base.model.max_seq_len:
        raise PlanError(f"--seq-len {seq_len} exceeds the {base.model.max_seq_len} positions of {base.model.name}")
    default = SearchSpace()
    space_def = SearchSpace(methods=tuple(dict.fromkeys(method)) if method else default.methods,
                            global_batch=global_batch,
                            micro_batches=_positive("--micro-batch", micro_batch) or default.micro_batches,
                            grad_ckpts=tuple(dict.fromkeys(grad_ckpt)) if grad_ckpt else default.grad_ckpts,
                            attns=tuple(dict.fromkeys(attn)) if attn else default.attns,
                            optimizers=tuple(dict.fromkeys(optimizer)) if optimizer else default.optimizers,
                            tps=_positive("--tp", tp), pps=_positive("--pp", pp))
    filters = Filters(engines=tuple(engine) if engine else None,
                      zero_stages=tuple(ZeroStage(z) for z in zero) if zero else None,
                      offloads=tuple(offload) if offload else None,
                      virtual_stages=_positive("--virtual-stages", virtual_stages) or (1,))
    runnable = None
    if measure:
        from runner.trial import unsupported

        runnable = unsupported
    space = build_space(base, space_def, filters, runnable)
    opts = TuneOptions(trials=trials, measure=measure, top=top, storage=storage, study=study, timeout_s=timeout,
                       seed=seed, trial_steps=trial_steps, trial_timeout_s=trial_timeout,
                       limits=limits_from(host_memory, nvme, headroom), cal=load_calibration(calibration))
    quiet_optuna()
    err = Console(stderr=True)
    from reports.tune_report import tune_progress

    title = "measured trials" if measure else "analytical trials"
    with tune_progress(err, title) as progress:
        result = run_tune(space, opts, progress)
    emitted: list[str] | None = None
    if emit is not None:
        from runner.emit import emit as emit_files

        emitted = [str(p) for p in emit_files(result.best, emit, force=force)]
    if json_out:
        from reports.fmt import print_json
        from reports.tune_report import tune_json

        print_json(tune_json(result, emitted))
        return
    from reports.tune_report import tune_view

    console = Console()
    console.print(tune_view(result))
    if emitted:
        console.print(f"Wrote {', '.join(emitted)}")
