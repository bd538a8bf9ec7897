"""Rich renderables for `ftplan plan`: the best plans per method and the winner's breakdown."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from planner.estimate import Estimate
from planner.rl.parts import plan_group
from planner.rl.settings import is_online_rl
from planner.rl.timing import generation_share
from planner.search import PlanResult
from planner.timing import JobTime
from reports.fit import Col, FitTable
from reports.fmt import params
from reports.memory_report import memory_table, note_lines
from reports.wrap import HyphenWrapped

RUN_MARK, NO_RUN_MARK = "✓", "✗"


def ranking_table(result: PlanResult, per_method: int, title: str) -> FitTable:
    from rich import box

    from planner.runnable import runnable
    from planner.timing import step_time

    # online RL: generation's share of the step instead of MFU (the step is mostly decoding)
    rl = bool(result.plans) and is_online_rl(result.plans[0].config.stage)
    # at 80 columns the plan name wraps at its `-` boundaries into two lines, numbers never wrap, and the step
    # time (tokens/s says it) and then MFU make way
    table = FitTable([Col("#", "right"), Col("method"), Col("plan", wrap=True, min_width=20), Col("run"),
                      Col("GiB/GPU (fill)", "right"), Col("tokens/s", "right"), Col("step s", "right", drop=2),
                      Col("gen" if rl else "MFU", "right", drop=1)],
                     title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                     caption=f"run: {RUN_MARK} = `ftplan run` executes the plan, {NO_RUN_MARK} = it does not "
                             "(--json: unrunnable_reasons)", caption_justify="left")
    shown: dict[tuple, int] = {}
    for rank, est in enumerate(result.plans, 1):
        group = plan_group(est.config)
        if shown.get(group, 0) >= per_method:
            continue
        shown[group] = shown.get(group, 0) + 1
        t = est.time if est.time is not None else step_time(est.config)
        last = f"{100 * generation_share(t):.0f}%" if rl else f"{100 * t.mfu:.0f}%"
        table.add_row(str(rank), est.config.method.value, HyphenWrapped(str(est.config)),
                      RUN_MARK if runnable(est.config) else NO_RUN_MARK, f"{est.memory.total / 2**30:.1f} "
                      f"({100 * est.memory.total / est.gpu_memory_bytes:.0f}%{' tight' if est.tight else ''})",
                      f"{t.tokens_per_s:,.0f}",
                      f"{t.step_time_s:.2f}", last)
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
    parts = [head, ranking_table(result, per_method, f"Best plans per method ({order})")]
    lora = next((e.config for e in result.plans if e.config.trains_adapter), None)
    parts += note_lines(cfg, *([lora] if lora is not None else []))
    rec = result.recommendation
    if rec is not None:
        parts.append(recommendation_line(rec))
    return Group(*parts, memory_table(best, title=win),
                 time_table(t, f"Winner's step time: {cfg.method.value} {cfg}", job))


def recommendation_line(rec) -> Text:
    """Why the winner is the winner: the fastest plan with headroom, or a tight one and by how much it is faster."""
    plan = rec.plan
    fill = 100 * plan.memory.device_wanted / plan.gpu_memory_bytes
    line = Text.assemble(("Recommended: ", "bold"), f"{plan.config.method.value} {plan.config} ({fill:.0f}% of the GPU"
                         f"{', tight' if plan.tight else ''}): {rec.reason}.")
    if rec.fastest is not plan:
        fastest = rec.fastest
        label = " Fastest: " if rec.fastest_gain > 0 else " Ranked first: "
        line.append(f"{label}{fastest.config.method.value} {fastest.config} "
                    f"({100 * fastest.memory.device_wanted / fastest.gpu_memory_bytes:.0f}% of the GPU, tight).",
                    style="yellow")
    return line


def plans_json(result: PlanResult, top: int) -> dict:
    from planner.estimate import estimate_to_dict

    per_group: dict[tuple, int] = {}
    chosen: list[Estimate] = []
    for est in result.plans:
        group = plan_group(est.config)
        if per_group.get(group, 0) < top:
            per_group[group] = per_group.get(group, 0) + 1
            chosen.append(est)
    return {"plans": [estimate_to_dict(e) for e in chosen], "candidates_evaluated": result.candidates_evaluated,
            "valid": result.valid, "fitting": len(result.plans), "rejected": result.rejected}
