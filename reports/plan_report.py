"""Rich renderables for `ftplan plan`: the best plans per method and the winner's breakdown."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from planner.estimate import Estimate
from planner.search import PlanResult
from planner.strategy import Method
from planner.timing import JobTime
from reports.fmt import params
from reports.memory_report import memory_table


def ranking_table(result: PlanResult, per_method: int, title: str) -> Table:
    from rich import box

    from planner.timing import step_time

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col, justify in (("#", "right"), ("method", "left"), ("plan", "left"), ("GiB/GPU (fill)", "right"),
                         ("tokens/s", "right"), ("step s", "right"), ("MFU", "right")):
        # narrow enough for an 80-column terminal: the plan name folds, numbers never do
        table.add_column(col, justify=justify, overflow="fold", no_wrap=col != "plan",
                         min_width=20 if col == "plan" else None)
    shown: dict[Method, int] = {}
    for rank, est in enumerate(result.plans, 1):
        method = est.config.method
        if shown.get(method, 0) >= per_method:
            continue
        shown[method] = shown.get(method, 0) + 1
        t = est.time if est.time is not None else step_time(est.config)
        table.add_row(str(rank), method.value, str(est.config), f"{est.memory.total / 2**30:.1f} "
                      f"({100 * est.memory.total / est.gpu_memory_bytes:.0f}%{' tight' if est.tight else ''})",
                      f"{t.tokens_per_s:,.0f}",
                      f"{t.step_time_s:.2f}", f"{100 * t.mfu:.0f}%")
    return table


def plan_view(result: PlanResult, per_method: int, job: JobTime | None = None) -> Group:
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
    return Group(head, ranking_table(result, per_method, "Best plans per method (ranked by tokens/s)"),
                 memory_table(best, title=f"Winner: {cfg.method.value} {cfg}"),
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
