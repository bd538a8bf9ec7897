"""`ftplan tune`: an Optuna search over the plan space, analytical, then short real trials with --measure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, ClassVar

from ftplan import options as o
from ftplan.app import app
from planner.fields import option
from planner.options import Options, TuneSpaceArgs


class Sampler(str, Enum):
    auto = "auto"
    tpe = "tpe"
    grid = "grid"


@dataclass(frozen=True, kw_only=True)
class TuneRunArgs:
    """How the tune runs: its budget, real trials, the study's storage and the workers' timing."""

    trials: int | None = option(None, help=(
        "Trials: sampled plans (default: every valid plan, exhaustively); with --measure, real trials (default 8), "
        "the budget of the whole study across all workers."))
    measure: bool = option(False, flags=("--measure",), help="Run short real trials of the best analytical plans.")
    top: int | None = option(None, flags=("--top",), help=(
        "--measure: plans in the first round (default half the trials), measured in full; later rounds re-rank "
        "with the fitted calibration, and the last 30% of --trials confirms the leader where it is left."))
    storage: str | None = option(None, help=(
        "Study storage: an SQLAlchemy URL (sqlite:///F.db, postgresql://USER@HOST/DB), journal:PATH (a file on a "
        "shared file system) or 'memory' (default sqlite:///ftplan-tune.db). Workers started with the same "
        "--storage and --study split the trials."))
    study: str | None = option(None, help="Study name (default from model, GPUs, global batch, seq-len).")
    timeout: float | None = option(None, help="Stop starting trials after this many seconds.")
    trial_steps: int = option(3, help="--measure: timed optimizer steps per trial (after one warm-up).")
    trial_timeout: float = option(300.0, help="--measure: seconds before a trial counts as hung.")
    heartbeat: float = option(10.0, help=(
        "--measure: heartbeat interval in seconds; a trial silent for 6 intervals counts as 'worker lost' and is "
        "re-run by another."))
    storage_retry: float = option(60.0, help=(
        "Seconds to retry an unreachable storage (with backoff) before giving up with exit code 2."))
    sampler: Sampler = option(Sampler.auto, help=(
        "Analytical: 'grid' evaluates every plan, 'tpe' samples --trials distinct plans, 'auto' enumerates a space "
        "of at most 10,000 runnable plans and samples larger ones."))
    seed: int = option(0, help="Sampler seed.")

    PANEL: ClassVar[str] = "Tuning"


@dataclass(frozen=True, kw_only=True)
class TuneOutput(o.JsonOutput):
    emit: Path | None = option(None, help="Write the winner's files (plan.json, ds_config.json, ...) here.")
    force: bool = option(False, flags=("--force",), help="Overwrite files in --emit.")


# the tune searches the strategy (TuneSpaceArgs says which values); the question's other groups as plan's
TUNE = o.expose(target=o.ALL, adapter=("lora_r", "lora_alpha", "lora_targets", "lora_dropout", "precision"),
                strategy=("seq_len", "fsdp_version"), switches=o.ALL, rollout=o.ALL,
                search=("methods", "global_batch", "include_unrunnable"), limits=o.ALL, sources=True)


def _positive(name: str, values: list[int] | None) -> tuple[int, ...] | None:
    from planner.errors import PlanError

    if values is None:
        return None
    if any(v < 1 for v in values):
        raise PlanError(f"{name} must be positive integers, got {values}")
    return tuple(dict.fromkeys(values))


@app.command()
@o.grouped
def tune(opts: Annotated[Options, TUNE], dims: TuneSpaceArgs, run: TuneRunArgs, out: TuneOutput) -> None:
    """Autotune: search the plan space with Optuna (time model), optionally with short real trials.

    With --measure, every worker started with the same --storage and --study shares the trials; --gpus
    is each worker's own device set (trials run on one node: multi-node trial plans are not measured)."""
    from rich.console import Console

    from planner.build import check_positions, config_from, device_fit_for, limits_from, parse_choices
    from planner.calibration import load_calibration
    from planner.errors import PlanError
    from planner.search import SearchSpace, search_space
    from planner.strategy import Attn, FsdpVersion, ZeroStage
    from planner.tune_space import Filters, build_space
    from runner.tune import TuneOptions, quiet_optuna
    from runner.tune import tune as run_tune
    from runner.tuning.results import ENUMERATE_UP_TO

    for name, value in (("--trials", run.trials), ("--top", run.top), ("--trial-steps", run.trial_steps)):
        if value is not None and value < 1:
            raise PlanError(f"{name} must be a positive integer, got {value}")
    for name, seconds in (("--timeout", run.timeout), ("--heartbeat", run.heartbeat),
                          ("--storage-retry", run.storage_retry)):
        if seconds is not None and seconds <= 0:
            raise PlanError(f"{name} must be positive, got {seconds}")
    if run.sampler is Sampler.tpe and run.trials is None and not run.measure:
        raise PlanError("--sampler tpe samples --trials plans: pass --trials N")
    if out.emit is not None and not out.force and (out.emit / "plan.json").exists():
        raise PlanError(f"{out.emit / 'plan.json'} exists; pass --force to overwrite")
    base = config_from(opts, check=False)
    check_positions(base)
    default = SearchSpace()
    space_def = search_space(base, methods=opts.search.methods, global_batch=opts.search.global_batch,
                             fsdp_version=FsdpVersion(opts.strategy.fsdp_version),
                             micro_batches=_positive("--micro-batch", dims.micro_batch) or default.micro_batches,
                             grad_ckpts=tuple(dict.fromkeys(dims.grad_ckpt)) if dims.grad_ckpt else default.grad_ckpts,
                             # the attention and optimizer a --from setup names, unless --attn / --optimizer
                             attns=tuple(dict.fromkeys(dims.attn)) if dims.attn
                             else parse_choices(opts.search.attns, Attn, "--attn"),
                             optimizers=tuple(dict.fromkeys(dims.optimizer)) if dims.optimizer
                             else (opts.strategy.optimizer,),
                             tps=_positive("--tp", dims.tp), pps=_positive("--pp", dims.pp))
    filters = Filters(engines=tuple(dims.engine) if dims.engine else None,
                      zero_stages=tuple(ZeroStage(z) for z in dims.zero) if dims.zero else None,
                      offloads=tuple(dims.offload) if dims.offload else None,
                      virtual_stages=_positive("--virtual-stages", dims.virtual_stages) or (1,))
    runnable = None
    if run.measure:
        from runner.trial import unsupported

        runnable = unsupported
    space = build_space(base, space_def, filters, runnable)
    tune_opts = TuneOptions(trials=run.trials, measure=run.measure, top=run.top, storage=run.storage,
                            study=run.study, timeout_s=run.timeout, seed=run.seed, trial_steps=run.trial_steps,
                            trial_timeout_s=run.trial_timeout, heartbeat_s=run.heartbeat,
                            storage_retry_s=run.storage_retry,
                            enumerate_up_to={Sampler.auto: ENUMERATE_UP_TO, Sampler.tpe: 0,
                                             Sampler.grid: float("inf")}[run.sampler],
                            limits=limits_from(opts.limits), cal=load_calibration(opts.limits.calibration),
                            include_unrunnable=opts.search.include_unrunnable)
    quiet_optuna()
    err = Console(stderr=True)
    from reports.tune_report import tune_progress

    title = "measured trials" if run.measure else "analytical trials"
    with tune_progress(err, title) as progress:
        result = run_tune(space, tune_opts, progress)
    emitted: list[str] | None = None
    if out.emit is not None:
        from runner.emit import emit as emit_files

        emitted = [str(p) for p in emit_files(result.best, out.emit, force=out.force)]
    fit = device_fit_for(opts)
    if out.json_out:
        from reports.fmt import print_json
        from reports.tune_report import tune_json

        print_json({**tune_json(result, emitted), **({"device_fit": fit.summary()} if fit else {})})
        return
    from reports.tune_report import tune_view

    console = Console()
    console.print(tune_view(result))
    if fit is not None:
        from reports.fit_report import device_fit_line

        console.print(device_fit_line(fit))
    if emitted:
        console.print(f"Wrote {', '.join(emitted)}")
