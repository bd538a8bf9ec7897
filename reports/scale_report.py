"""The scaling report: a rich table with bars, and the same data as JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from planner.estimate import time_to_dict
from planner.scaling import ScaleResult
from reports.fit import Bar
from reports.wrap import HyphenWrapped

BAR_WIDTH = 10


def scale_json(result: ScaleResult, *, model: str, gpu: str, method: str, seq_len: int) -> dict[str, Any]:
    rows = []
    for p in result.points:
        row: dict[str, Any] = {"gpus": p.gpus, "cluster": str(p.cluster), "fits": p.best is not None,
                               "candidates_evaluated": p.candidates_evaluated, "fitting": p.fitting}
        if p.best is not None:
            cfg = p.best.config
            row.update({"plan": str(cfg), "strategy": cfg.strategy_name(), "global_batch": cfg.global_batch,
                        "memory_per_gpu_bytes": round(p.best.memory.total), **time_to_dict(p.best.time),
                        "speedup": p.speedup, "efficiency": p.efficiency})
        rows.append(row)
    return {"model": model, "gpu": gpu, "method": method, "seq_len": seq_len, "baseline_gpus": result.baseline_gpus,
            "rows": rows}


def scale_view(result: ScaleResult, *, model: str, gpu: str, method: str, files: list[str] | None = None) -> Group:
    fitted = [p for p in result.points if p.best is not None and p.best.time is not None]
    top = max((p.best.time.tokens_per_s for p in fitted), default=1.0)
    from rich import box

    table = Table(title=f"{model} ({method}) on {gpu}: best plan per GPU count, speedup against "
                        f"{result.baseline_gpus or '-'} GPU(s) (eff.: scaling efficiency)", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), pad_edge=False)
    for col, justify in (("GPUs", "right"), ("plan", "left"), ("tokens/s", "right"), ("", "left"),
                         ("speedup", "right"), ("eff.", "right"), ("MFU", "right"), ("step s", "right")):
        # fits 80 columns: the plan name wraps at its `-` boundaries, numbers and bars never wrap
        table.add_column(col, justify=justify, no_wrap=col != "plan")
    for p in result.points:
        if p.best is None or p.best.time is None:
            table.add_row(str(p.gpus), Text("no plan fits", style="red"), "", "", "", "", "", "")
            continue
        t = p.best.time
        table.add_row(str(p.gpus), HyphenWrapped(str(p.best.config)), f"{t.tokens_per_s:,.0f}",
                      Bar(t.tokens_per_s / top, BAR_WIDTH), f"{p.speedup:.2f}x", f"{100 * p.efficiency:.0f}%",
                      f"{100 * t.mfu:.0f}%", f"{t.step_time_s:.2f}")
    parts: list = [table]
    if files:
        parts.append(Text("wrote " + ", ".join(files)))
    return Group(*parts)
