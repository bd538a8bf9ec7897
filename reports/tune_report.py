"""Rich renderables and JSON for `ftplan tune`: a progress bar with the best so far, the trials, the
Pareto front (tokens/s against memory per GPU) and the winner."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from planner.tune_result import TrialRow, TuneResult
from reports.fit import Col, FitTable
from reports.wrap import HyphenWrapped

_SHOWN_TRIALS = 20


@contextmanager
def tune_progress(console: Console, title: str) -> Iterator[Any]:
    """Yields the tuner's progress callback (done, total, best so far). The bar draws on a terminal only,
    from the first trial on, and goes away at the end (the final tables follow), so an error before or
    during the search leaves just its one line."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("best: {task.fields[best]}"), console=console, transient=True)
    task = bar.add_task(title, total=None, best="-")
    started = False

    def update(done: int, total: int | None, best: str) -> None:
        nonlocal started
        if not console.is_terminal:
            return
        if not started:
            bar.start()
            started = True
        bar.update(task, completed=done, total=total, best=best or "-")

    try:
        yield update
    finally:
        if started:
            bar.stop()


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "" if x is None else format(x, fmt)


def _gib(x: float | None) -> str:
    return "" if x is None else f"{x / 2**30:.2f}"


def trials_table(result: TuneResult) -> FitTable:
    """The best completed trials, then every failed one, then a count of the rest. "Best" is the tuner's
    order: its winner first (which follows `plan`'s tie rule: within 1% of the fastest, the simpler plan),
    then the others by tokens/s, so the first row is the plan the tuner recommends."""
    measured = result.measured
    title = ("Measured trials" if measured else "Analytical trials") + " (best first; failures with their reason)"
    # plan names wrap at their `-` boundaries, reasons at spaces, numbers never; a narrow terminal drops the
    # measured trials' details first (trial seconds, steps, step range, predicted GiB, round), the calibrated
    # prediction the trial was chosen by last
    cols = [Col("#", "right"), Col("plan", wrap=True, min_width=20), Col("run"), Col("state"),
            Col("tokens/s", "right"), Col("GiB", "right", drop=3)]
    if measured:
        cols.pop(2)  # every measured trial ran: `run` marks say nothing there
    if measured:
        cols += [Col("step range\ntok/s", "right", drop=6), Col("pred\ntok/s", "right", drop=2),
                 Col("calibrated", "right", drop=1), Col("pred\nGiB", "right", drop=5),
                 Col("steps", "right", drop=7), Col("round", "right", drop=4), Col("trial s", "right", drop=7)]
    cols += [Col("reason", wrap=True)]
    from rich import box

    table = FitTable(cols, title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    done = sorted((r for r in result.rows if r.state == "complete"),
                  key=lambda r: (r.number != result.best_row.number, -(r.tokens_per_s or 0)))
    failed = [r for r in result.rows if r.state in ("failed", "lost")]
    shown = done[:_SHOWN_TRIALS] + failed[:_SHOWN_TRIALS]
    if measured:
        shown += [r for r in result.rows if r.state in ("running", "waiting")]
    for r in shown:
        style = "bold green" if r.number == result.best_row.number and r.state == "complete" else (
            "red" if r.state in ("failed", "lost") else "")
        name = HyphenWrapped(r.name) if r.name else _params_name(r)
        cells = [str(r.number), name, _run_mark(r.runnable), r.state, _num(r.tokens_per_s), _gib(r.peak_bytes)]
        if measured:
            cells.pop(2)
            rng = r.tokens_per_s_range
            cells += ["" if rng is None else f"{rng[0]:,.0f}-{rng[1]:,.0f}", _num(r.predicted_tokens_per_s),
                      _num(r.calibrated_tokens_per_s), _gib(r.predicted_peak_bytes), _num(r.steps, "d"),
                      _num(r.round, "d"), _num(r.wall_s, ".1f")]
        cells.append(r.reason[:240])  # a reason is one line; the whole of it is in --json
        table.add_row(*cells, style=style)
    rest = len(result.rows) - len(shown)
    if rest > 0:
        counts: dict[str, int] = {}
        for r in result.rows:
            if r not in shown:
                counts[r.state] = counts.get(r.state, 0) + 1
        table.caption = f"{rest:,} more: " + ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items()))
    return table


def _run_mark(flag: bool | None) -> str:
    """Whether `ftplan run` executes the plan (marks as in `ftplan plan`); blank when the trial names no plan."""
    from reports.plan_report import NO_RUN_MARK, RUN_MARK

    return "" if flag is None else RUN_MARK if flag else NO_RUN_MARK


def _params_name(r: TrialRow) -> str:
    return " ".join(f"{k}={v}" for k, v in r.params.items())


def pareto_table(result: TuneResult) -> Table:
    table = Table(title="Pareto front (time model): no plan is both faster and smaller", title_justify="left")
    for col, justify in (("plan", "left"), ("method", "left"), ("tokens/s", "right"), ("GiB/GPU", "right")):
        table.add_column(col, justify=justify, no_wrap=col != "plan")
    for r in result.pareto:
        table.add_row(HyphenWrapped(r.name), str(r.params.get("method", "")), _num(r.tokens_per_s), _gib(r.peak_bytes))
    return table


def calibration_text(cal: dict[str, Any]) -> Text:
    """The calibration fitted from the measured trials, and the per-strategy residual factors."""
    factors = ", ".join(f"{k} {v:.4g}" for k, v in cal["factors"].items() if v is not None)
    ratios = ", ".join(f"{k} x{v:.2f}" for k, v in sorted(cal.get("ratio_by_strategy", {}).items()))
    return Text.assemble(("Calibration fitted from ", "bold"), f"{cal['from_trials']} measured trials: {factors}; "
                         f"measured / calibrated per strategy: {ratios}; model spread on the measured trials "
                         f"{cal['log_spread']:.1%} (log). Re-ranked predictions are in the 'calibrated' column.")


def tune_view(result: TuneResult) -> Group:
    cfg = result.best.config
    head = Text.assemble(
        ("ftplan tune ", "bold"), f"{cfg.model.name} on {cfg.cluster}, study '{result.study}' in {result.storage}: ",
        f"{result.space_points:,} points in the space, {result.runnable_plans:,} valid plans, "
        f"sampler {result.sampler}"
        + (f" ({result.plans_evaluated:,} distinct plans evaluated, duplicates skipped)" if result.sampler == "tpe"
           else "")
        + f". {result.trials_completed:,} trials completed, {result.trials_failed:,} failed, "
        f"{result.trials_infeasible:,} infeasible or skipped"
        + (f", {result.trials_lost:,} lost with their worker (re-run)." if result.trials_lost else "."))
    parts: list[Any] = [head, trials_table(result)]
    if result.measured and result.calibration:
        parts.append(calibration_text(result.calibration))
    parts.append(pareto_table(result))
    b = result.best_row
    what = "measured" if result.measured else "predicted"
    from planner.runnable import runnable

    win = Text.assemble(("Winner: ", "bold green"), (f"{cfg.method.value} {cfg}", "bold"),
                        "" if runnable(cfg) else " (not run by `ftplan run`)",
                        f"  {_num(b.tokens_per_s)} tokens/s {what}, {_gib(result.best.memory.total)} GiB/GPU predicted")
    if result.measured:
        win.append(f"; real trials took {result.measured_trial_s:,.0f} s in all")
    parts.append(win)
    return Group(*parts)


def _row_json(r: TrialRow) -> dict[str, Any]:
    return {"number": r.number, "phase": r.phase, "state": r.state, "name": r.name, "params": r.params,
            "tokens_per_s": r.tokens_per_s, "peak_bytes": r.peak_bytes,
            "predicted_tokens_per_s": r.predicted_tokens_per_s, "predicted_peak_bytes": r.predicted_peak_bytes,
            "reason": r.reason, "wall_s": r.wall_s, "calibrated_tokens_per_s": r.calibrated_tokens_per_s,
            "tokens_per_s_range": list(r.tokens_per_s_range) if r.tokens_per_s_range else None, "steps": r.steps,
            "round": r.round, "worker": r.worker, "runnable": r.runnable}


def tune_json(result: TuneResult, emitted: list[str] | None = None) -> dict[str, Any]:
    from planner.estimate import estimate_to_dict

    out: dict[str, Any] = {
        "best": estimate_to_dict(result.best),
        "best_tokens_per_s": result.best_row.tokens_per_s,
        "best_source": "measured" if result.measured else "time model",
        "trials_completed": result.trials_completed,
        "trials_failed": result.trials_failed,
        "trials_infeasible": result.trials_infeasible,
        "study": result.study,
        "storage": result.storage,
        "sampler": result.sampler,
        "space_points": result.space_points,
        "valid_plans": result.runnable_plans,
        "measured_trial_s": result.measured_trial_s,
        "plans_evaluated": result.plans_evaluated,
        "pareto": [_row_json(r) for r in result.pareto],
    }
    if result.measured:
        out["trials"] = [_row_json(r) for r in result.rows]
        out["trials_lost"] = result.trials_lost
        out["calibration"] = result.calibration
    if emitted is not None:
        out["emitted"] = emitted
    return out
