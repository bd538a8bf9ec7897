"""`ftplan estimate`, `ftplan plan`, `ftplan models`, `ftplan gpus`."""

from __future__ import annotations

from typing import Annotated

from rich.console import Console

from ftplan import options as o
from ftplan.app import app
from planner.options import Options

# estimate: one configuration, every option of it; plan: the search fixes no strategy, only the batch shape,
# the user's optimizer and the FSDP version
ESTIMATE = o.expose(target=o.ALL, adapter=o.ALL, strategy=o.ALL, switches=o.ALL, rollout=o.ALL, limits=o.ALL,
                    job=o.ALL, solve=o.ALL, sources=True)
PLAN = o.expose(target=o.ALL, adapter=("lora_r", "lora_alpha", "lora_targets", "lora_dropout", "precision"),
                strategy=("seq_len", "optimizer", "fsdp_version"), switches=o.ALL, rollout=o.ALL, search=o.ALL,
                limits=o.ALL, job=o.ALL, show=o.ALL, solve=o.ALL, sources=True)


def _fit_line(fit: object) -> None:
    if fit is not None:
        from reports.fit_report import device_fit_line

        Console().print(device_fit_line(fit))  # type: ignore[arg-type]


@app.command()
@o.grouped
def estimate(opts: Annotated[Options, ESTIMATE], out: o.EmitOutput) -> None:
    """Memory and speed of one configuration, with their breakdowns."""
    from ftplan.answers import estimate_answer

    answer = estimate_answer(opts)
    est = answer.est
    emitted = None
    if out.emit_dir is not None:
        from ftplan.cmd_emit import emit_files

        emitted = emit_files(est, out.emit_dir, force=out.force)
    if out.json_out:
        from reports.fmt import print_json

        print_json(answer.json())
        return
    from reports.memory_report import estimate_view
    from reports.time_report import time_table

    Console().print(estimate_view(est))
    if answer.limit is not None:
        from reports.memory_report import limit_line

        Console().print(limit_line(answer.limit))
    if est.time is not None:
        Console().print(time_table(est.time, f"Step time: {est.config}", answer.job))
    _fit_line(answer.fit)
    if emitted is not None:
        Console().print(emitted)


@app.command()
@o.grouped
def plan(opts: Annotated[Options, PLAN], out: o.PlanOutput) -> None:
    """Enumerate every valid strategy, keep those that fit, rank them by tokens/s (within 1%: simpler first;
    plans `ftplan run` executes first unless --include-unrunnable)."""
    from ftplan.answers import plan_answer
    from planner.errors import PlanError

    if out.emit_dir is None and out.pick != 1:
        raise PlanError("--pick chooses the plan to --emit: pass --emit DIR too")
    answer = plan_answer(opts)
    emitted = None
    if out.emit_dir is not None:
        from ftplan.cmd_emit import emit_pick

        emitted = emit_pick(answer.result, out.pick, out.emit_dir, force=out.force)
    if out.json_out:
        from reports.fmt import print_json

        print_json(answer.json())
        return
    from reports.plan_report import plan_view

    per_method = len(answer.result.plans) if opts.show.all_plans else opts.show.top
    Console().print(plan_view(answer.result, per_method, answer.job,
                              runnable_first=not opts.search.include_unrunnable))
    if answer.limit is not None:
        from reports.memory_report import limit_line

        Console().print(limit_line(answer.limit))
    _fit_line(answer.fit)
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
