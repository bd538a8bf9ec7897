"""`ftplan tune`: an Optuna search over the plan space, analytical, then short real trials with --measure."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ftplan import options as o
from ftplan.cli import app
from planner.strategy import Attn, Engine, GradCkpt, Offload, Optimizer

TrialsOpt = Annotated[int | None, typer.Option(help="Trials: sampled plans (default: every valid plan, "
                                                     "exhaustively); with --measure, real trials (default 8), "
                                                     "the budget of the whole study across all workers.")]
MeasureOpt = Annotated[bool, typer.Option("--measure", help="Run short real trials of the best analytical plans.")]
TopOpt = Annotated[int | None, typer.Option("--top", help="--measure: plans in the first round (default half the "
                                                          "trials); later rounds re-rank with the fitted "
                                                          "calibration.")]
StorageOpt = Annotated[str | None, typer.Option(help="Study storage: an SQLAlchemy URL (sqlite:///F.db, "
                                                     "postgresql://USER@HOST/DB), journal:PATH (a file on a "
                                                     "shared file system) or 'memory' (default "
                                                     "sqlite:///ftplan-tune.db). Workers started with the same "
                                                     "--storage and --study split the trials.")]
StudyOpt = Annotated[str | None, typer.Option(help="Study name (default from model, GPUs, global batch, seq-len).")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.")]
EmitOpt = Annotated[Path | None, typer.Option(help="Write the winner's files (plan.json, ds_config.json, ...) here.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite files in --emit.")]
SeedOpt = Annotated[int, typer.Option(help="Sampler seed.")]


class Sampler(str, Enum):
    auto = "auto"
    tpe = "tpe"
    grid = "grid"


SamplerOpt = Annotated[Sampler, typer.Option(help="Analytical: 'grid' evaluates every plan, 'tpe' samples --trials "
                                                  "distinct plans, 'auto' enumerates a space of at most 10,000 "
                                                  "runnable plans and samples larger ones.")]
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
HeartbeatOpt = Annotated[float, typer.Option(help="--measure: heartbeat interval in seconds; a trial silent for 6 "
                                                  "intervals counts as 'worker lost' and is re-run by another.")]
StorageRetryOpt = Annotated[float, typer.Option(help="Seconds to retry an unreachable storage (with backoff) "
                                                     "before giving up with exit code 2.")]


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
         stage: o.StageOpt = o.Stage.sft, rope_scaling: o.RopeScalingOpt = None,
         host_memory: o.HostMemOpt = None, nvme: o.NvmeOpt = 2048.0,
         headroom: o.HeadroomOpt = 0.0, calibration: o.CalibrationOpt = None, trial_steps: TrialStepsOpt = 3,
         trial_timeout: TrialTimeoutOpt = 300.0, heartbeat: HeartbeatOpt = 10.0,
         storage_retry: StorageRetryOpt = 60.0, sampler: SamplerOpt = Sampler.auto, seed: SeedOpt = 0,
         json_out: o.JsonOpt = False,
         cross_entropy: o.CrossEntropyOpt = o.CrossEntropy.standard, kernels: o.KernelsOpt = o.Kernels.eager,
         activation_offload: o.ActivationOffloadOpt = False, fsdp_version: o.FsdpVersionOpt = 2,
         torch_compile: o.CompileOpt = False, bnb_version: o.BnbVersionOpt = "",
         frozen_fp32: o.FrozenFp32Opt = False, lora_dropout: o.LoraDropoutOpt = o.LORA_DROPOUT,
         kbit_prep: o.KbitPrepOpt = True,
         include_unrunnable: o.IncludeUnrunnableOpt = False) -> None:
    """Autotune: search the plan space with Optuna (time model), optionally with short real trials.

    With --measure, every worker started with the same --storage and --study shares the trials; --gpus
    is each worker's own device set (trials run on one node: multi-node trial plans are not measured)."""
    from rich.console import Console

    from ftplan.answers import check_positions, limits_from
    from planner.build import build_config
    from planner.calibration import load_calibration
    from planner.errors import PlanError
    from planner.search import SearchSpace, search_space
    from planner.strategy import ZeroStage
    from planner.tune_space import Filters, build_space
    from runner.tune import TuneOptions, quiet_optuna
    from runner.tune import tune as run_tune
    from runner.tuning.results import ENUMERATE_UP_TO

    for name, value in (("--trials", trials), ("--top", top), ("--trial-steps", trial_steps)):
        if value is not None and value < 1:
            raise PlanError(f"{name} must be a positive integer, got {value}")
    for name, seconds in (("--timeout", timeout), ("--heartbeat", heartbeat), ("--storage-retry", storage_retry)):
        if seconds is not None and seconds <= 0:
            raise PlanError(f"{name} must be positive, got {seconds}")
    if sampler is Sampler.tpe and trials is None and not measure:
        raise PlanError("--sampler tpe samples --trials plans: pass --trials N")
    if emit is not None and not force and (emit / "plan.json").exists():
        raise PlanError(f"{emit / 'plan.json'} exists; pass --force to overwrite")
    base = build_config(model=model, gpus=gpus, seq_len=seq_len, lora_r=lora_r, lora_alpha=lora_alpha,
                        lora_targets=lora_targets, precision=precision, stage=stage, rope_scaling=rope_scaling,
                        check=False, **o.switches(cross_entropy, kernels, activation_offload, fsdp_version,
                                                  torch_compile, bnb_version, frozen_fp32, lora_dropout, kbit_prep))
    check_positions(base, seq_len)
    default = SearchSpace()
    space_def = search_space(base, methods=method, global_batch=global_batch,
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
                       seed=seed, trial_steps=trial_steps, trial_timeout_s=trial_timeout, heartbeat_s=heartbeat,
                       storage_retry_s=storage_retry,
                       enumerate_up_to={Sampler.auto: ENUMERATE_UP_TO, Sampler.tpe: 0,
                                        Sampler.grid: float("inf")}[sampler],
                       limits=limits_from(host_memory, nvme, headroom), cal=load_calibration(calibration),
                       include_unrunnable=include_unrunnable)
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
