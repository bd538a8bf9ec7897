"""Rich renderables for `ftplan plan`: the best plans per method and the winner's breakdown."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from planner.estimate import Estimate
from planner.search import PlanResult
from planner.strategy import Method
from planner.timing import JobTime
from reports.fit import Col, FitTable
from reports.fmt import params
from reports.memory_report import memory_table
from reports.wrap import HyphenWrapped

RUN_MARK, NO_RUN_MARK = "✓", "✗"


def ranking_table(result: PlanResult, per_method: int, title: str) -> FitTable:
    from rich import box

    from planner.runnable import runnable
    from planner.timing import step_time

    # at 80 columns the plan name wraps at its `-` boundaries into two lines, numbers never wrap, and the step
    # time (tokens/s says it) and then MFU make way
    table = FitTable([Col("#", "right"), Col("method"), Col("plan", wrap=True, min_width=20), Col("run"),
                      Col("GiB/GPU (fill)", "right"), Col("tokens/s", "right"), Col("step s", "right", drop=2),
                      Col("MFU", "right", drop=1)],
                     title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                     caption=f"run: {RUN_MARK} = `ftplan run` executes the plan, {NO_RUN_MARK} = it does not "
                             "(--json: unrunnable_reasons)", caption_justify="left")
    shown: dict[Method, int] = {}
    for rank, est in enumerate(result.plans, 1):
        method = est.config.method
        if shown.get(method, 0) >= per_method:
            continue
        shown[method] = shown.get(method, 0) + 1
        t = est.time if est.time is not None else step_time(est.config)
        table.add_row(str(rank), method.value, HyphenWrapped(str(est.config)),
                      RUN_MARK if runnable(est.config) else NO_RUN_MARK, f"{est.memory.total / 2**30:.1f} "
                      f"({100 * est.memory.total / est.gpu_memory_bytes:.0f}%{' tight' if est.tight else ''})",
                      f"{t.tokens_per_s:,.0f}",
                      f"{t.step_time_s:.2f}", f"{100 * t.mfu:.0f}%")
    return table


def plan_view(result: PlanResult, per_method: int, job: JobTime | None = None, runnable_first: bool = True) -> Group:
    if not result.plans:
        reasons = sorted(result.rejected.items(), key=lambda kv: -kv[1])[:5]
        lines = [Text(f"No plan fits ({result.candidates_evaluated:,} candidates evaluated).", style="red bold")]
        lines += [Text(f"  {count:,} x {reason}") for reason, count in reasons]
        return Group(*lines)
    best = result.plans[0]
    cfg = best.config
    head = Text.assemble(
        (cfg.model.name, "bold"), f" on {cfg.cluster}: {result.candidates_evaluated:,} candidates, "
        f"{result.valid:,} valid, {len(result.plans):,} fit. Global batch {cfg.global_batch} x "
        f"{cfg.seq_len} tokens; params {params(best.params_total)}.")
    from planner.timing import step_time
    from reports.time_report import time_table

    t = best.time if best.time is not None else step_time(cfg)
    from planner.runnable import runnable

    order = "ranked by tokens/s, plans `ftplan run` executes first" if runnable_first else "ranked by tokens/s"
    win = f"Winner: {cfg.method.value} {cfg}" + ("" if runnable(cfg) else " (not run by `ftplan run`)")
    return Group(head, ranking_table(result, per_method, f"Best plans per method ({order})"),
                 memory_table(best, title=win),
                 time_table(t, f"Winner's step time: {cfg.method.value} {cfg}", job))


def plans_json(result: PlanResult, top: int) -> dict:
    from planner.estimate import estimate_to_dict

    per_method: dict[Method, int] = {}
    chosen: list[Estimate] = []
    for est in result.plans:
        if per_method.get(est.config.method, 0) < top:
            per_method[est.config.method] = per_method.get(est.config.method, 0) + 1
            chosen.append(est)
    return {"plans": [estimate_to_dict(e) for e in chosen], "candidates_evaluated": result.candidates_evaluated,
            "valid": result.valid, "fitting": len(result.plans), "rejected": result.rejected}
