"""`ftplan emit PLAN.json DIR`, and the `--emit DIR` step shared with `ftplan plan` and `ftplan estimate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ftplan import options as o
from ftplan.app import app
from planner.errors import PlanError
from planner.estimate import Estimate
from planner.search import PlanResult


def emit_files(est: Estimate, out_dir: Path, *, force: bool):
    """Write the files; return the rich renderable that lists them and says how to start training."""
    from reports.emit_report import emit_view
    from runner.emit import emit, launch_summary

    paths = emit(est, out_dir, force=force)
    files, start, others = launch_summary(est.config, paths)
    return emit_view(str(est.config), files, start, others, warnings=est.fit_reasons)


def emit_pick(result: PlanResult, pick: int, out_dir: Path, *, force: bool):
    if not result.plans:
        raise PlanError("no plan fits, so there is nothing to --emit")
    if not 1 <= pick <= len(result.plans):
        raise PlanError(f"--pick {pick} is outside the {len(result.plans)} fitting plans (1..{len(result.plans)})")
    return emit_files(result.plans[pick - 1], out_dir, force=force)


@app.command()
def emit(plan_file: Annotated[Path, typer.Argument(help="plan.json written by --emit (or `estimate --json`).")],
         out_dir: Annotated[Path, typer.Argument(help="Directory to write the files into.")],
         force: o.ForceOpt = False) -> None:
    """Write ds_config, accelerate.yaml, launch.sh and LLaMA-Factory YAML for a saved plan."""
    from planner.estimate import estimate
    from runner.emit import load_plan

    cfg = load_plan(plan_file)
    Console().print(emit_files(estimate(cfg), out_dir, force=force))
