"""What `estimate`, `plan` and `scale` compute, before anything is printed: one code path for the CLI
(`--json` and the rich tables) and for `ftplan serve`'s JSON API. Each takes the options object
(planner.options.Options); each answer's `json()` is exactly what `--json` prints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner.device_fit_file import AUTO, DeviceFitFile
from planner.errors import PlanError
from planner.estimate import Estimate
from planner.options import Options, ScaleArgs, from_flat, replace_flat
from planner.search import PlanResult
from planner.strategy import FsdpVersion, Method


def _fit_json(fit: DeviceFitFile | None) -> dict[str, Any]:
    """The device fit the answer used, when one was (its device, machine and age)."""
    return {"device_fit": fit.summary()} if fit is not None else {}


@dataclass(frozen=True)
class EstimateAnswer:
    est: Estimate
    job: Any  # planner.timing.JobTime | None
    limit: Any = None  # planner.limits.Limit | None (--solve)
    fit: DeviceFitFile | None = None

    def json(self) -> dict[str, Any]:
        from planner.estimate import estimate_to_dict
        from planner.limits import limit_to_dict
        from planner.timing import job_to_dict

        return {**estimate_to_dict(self.est), **({"job": job_to_dict(self.job)} if self.job else {}),
                **({"limit": limit_to_dict(self.limit)} if self.limit is not None else {}), **_fit_json(self.fit)}


def _job_size(opts: Options) -> Any:
    from planner.timing import job_size

    return job_size(opts.job.tokens, opts.job.samples, opts.job.epochs)


def estimate_answer(opts: Options) -> EstimateAnswer:
    from planner.build import config_from, device_fit_for, limits_from
    from planner.calibration import load_calibration
    from planner.estimate import estimate
    from planner.timing import job_time

    cfg = config_from(opts)
    size = _job_size(opts)
    limits, cal = limits_from(opts.limits), load_calibration(opts.limits.calibration)
    est = estimate(cfg, limits, cal)
    job = job_time(est.time, cfg, size) if size is not None and est.time is not None else None
    return EstimateAnswer(est, job, _solved(opts, cfg, limits, cal), device_fit_for(opts))


def _solved(opts: Options, cfg: Any, limits: Any, cal: Any) -> Any:
    """--solve: the limit of `cfg` (planner.limits.solve), or None when not asked."""
    if opts.solve.solve is None or cfg is None:
        return None
    from planner.limits import solve

    return solve(cfg, opts.solve.solve, limits, cal)


@dataclass(frozen=True)
class PlanAnswer:
    result: PlanResult
    size: Any  # planner.timing.JobSize | None
    top: int
    all_plans: bool
    limit: Any = None  # planner.limits.Limit | None: --solve, of the recommended plan
    fit: DeviceFitFile | None = None

    @property
    def job(self) -> Any:
        from planner.timing import job_time

        best = self.result.plans[0] if self.result.plans else None
        if self.size is None or best is None or best.time is None:
            return None
        return job_time(best.time, best.config, self.size)

    def chosen(self) -> list[Estimate]:
        """The plans `--json` lists, best first: every fitting plan with --all, else the best `top` per method."""
        if self.all_plans:
            return list(self.result.plans)
        from planner.rl.parts import plan_group

        shown: dict[tuple, int] = {}
        out = []
        for est in self.result.plans:
            group = plan_group(est.config)  # by method (online RL: and generation engine)
            if shown.get(group, 0) < self.top:
                shown[group] = shown.get(group, 0) + 1
                out.append(est)
        return out

    def json(self) -> dict[str, Any]:
        from planner.estimate import estimate_to_dict
        from planner.timing import job_time, job_to_dict

        plans = []
        for est in self.chosen():
            entry = estimate_to_dict(est)
            if self.size is not None and est.time is not None:
                entry["job"] = job_to_dict(job_time(est.time, est.config, self.size))
            plans.append(entry)
        from planner.search import recommendation_to_dict

        r = self.result
        from planner.limits import limit_to_dict

        out = {"plans": plans, "candidates_evaluated": r.candidates_evaluated, "valid": r.valid,
               "fitting": len(r.plans), "rejected": r.rejected,
               "recommendation": recommendation_to_dict(r.recommendation), **_fit_json(self.fit)}
        if self.limit is not None:
            out["limit"] = limit_to_dict(self.limit)
        return out


def plan_answer(opts: Options) -> PlanAnswer:
    from planner.build import (
        check_global_batch,
        check_positions,
        config_from,
        device_fit_for,
        limits_from,
        parse_choices,
    )
    from planner.calibration import load_calibration
    from planner.rl.options import rollout_space
    from planner.runnable import runnable_first
    from planner.search import plan, search_space
    from planner.strategy import Attn, Optimizer

    search = opts.search
    check_global_batch(search.global_batch)
    if opts.show.top < 1:
        raise PlanError(f"--top must be a positive integer, got {opts.show.top}")
    base = config_from(opts, check=False)
    check_positions(base)
    space = search_space(base, methods=search.methods, global_batch=search.global_batch,
                         fsdp_version=FsdpVersion(opts.strategy.fsdp_version),
                         optimizers=parse_choices(search.optimizers, Optimizer, "--optimizers")
                         or (opts.strategy.optimizer,),
                         attns=parse_choices(search.attns, Attn, "--attns"),
                         rollouts=rollout_space(opts.rollout, base.stage))
    size = _job_size(opts)
    limits, cal = limits_from(opts.limits), load_calibration(opts.limits.calibration)
    result = plan(base, space, limits, cal)
    if not search.include_unrunnable:  # the winner (and --emit's pick) is a plan `ftplan run` executes
        from planner.search import with_recommendation

        result = with_recommendation(dataclasses.replace(result, plans=runnable_first(result.plans)))
    best = result.plans[0].config if result.plans else None
    return PlanAnswer(result, size, opts.show.top, opts.show.all_plans, _solved(opts, best, limits, cal),
                      device_fit_for(opts))


@dataclass(frozen=True)
class ScaleAnswer:
    result: Any  # planner.scaling.ScaleResult
    model: str
    gpu: str
    method: Method
    seq_len: int
    fit: DeviceFitFile | None = None

    def json(self) -> dict[str, Any]:
        from reports.scale_report import scale_json

        return {**scale_json(self.result, model=self.model, gpu=self.gpu, method=self.method.value,
                             seq_len=self.seq_len), **_fit_json(self.fit)}


def scale_answer(opts: Options, scale_args: ScaleArgs) -> ScaleAnswer:
    from planner.build import check_global_batch, check_positions, config_from, device_fit_for, limits_from
    from planner.calibration import load_calibration
    from planner.gpus import gpu_from_name
    from planner.rl.options import rollout_space
    from planner.scaling import gpu_counts, scale
    from planner.search import search_space

    spec = gpu_from_name(scale_args.gpu)
    gpu_counts(scale_args.max_gpus, spec.gpus_per_node)  # checks --max-gpus before any work
    check_global_batch(opts.search.global_batch)
    opts = replace_flat(opts, gpus=f"1x{spec.name}")
    base = config_from(opts, check=False)
    check_positions(base)
    method = opts.adapter.method
    result = scale(base, scale_args.max_gpus,
                   search_space(base, methods=(method,), global_batch=opts.search.global_batch,
                                fsdp_version=FsdpVersion(opts.strategy.fsdp_version),
                                rollouts=rollout_space(opts.rollout, base.stage)),
                   limits_from(opts.limits), load_calibration(opts.limits.calibration))
    return ScaleAnswer(result, base.model.name, spec.name, method, base.seq_len, device_fit_for(opts))


def answer(name: str, params: dict[str, Any]) -> Any:
    """The answer of `estimate`, `plan` or `scale` for the command's parameters by name (what its click
    parser returns): how `ftplan serve` asks."""
    opts, rest = from_flat(Options, params)
    if name == "scale":
        scale_args, rest = from_flat(ScaleArgs, rest)
    given = [name for name, value in rest.items() if value not in (None, [], ())]
    if str(opts.limits.device_fit) != AUTO:  # the server uses its own machine's fit, never a file a request names
        given.insert(0, "device_fit")
    if given:  # an option of the command line only (--from reads local files)
        raise PlanError(f"No such option: --{'from' if given[0] == 'from_file' else given[0].replace('_', '-')}")
    if name == "scale":
        return scale_answer(opts, scale_args)
    return {"estimate": estimate_answer, "plan": plan_answer}[name](opts)


def models_json() -> list[dict[str, Any]]:
    """What `ftplan models --json` prints."""
    from planner.models import from_name, model_names
    from reports.catalog_report import models_json as rows_json

    return rows_json([from_name(n) for n in model_names()])


def gpus_json() -> list[dict[str, Any]]:
    """What `ftplan gpus --json` prints."""
    from planner.gpus import GPUS
    from reports.catalog_report import gpus_json as rows_json

    return rows_json(list(GPUS.values()))
