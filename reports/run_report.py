"""The end of `ftplan run`: the plan's predicted peak memory and tokens/s beside the measured ones."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from reports.fmt import gib


def _ratio(measured: float | None, predicted: float | None) -> str:
    if not measured or not predicted:
        return "-"
    return f"{measured / predicted:.2f}x"


def run_summary_table(summary: dict[str, Any], *, on_cuda: bool) -> Table:
    table = Table(title=f"ftplan run {summary['plan']}: {summary['steps']} steps")
    table.add_column("quantity")
    table.add_column("predicted", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("measured / predicted", justify="right")
    mem_label = "peak memory per device" if on_cuda else "peak memory per process (RSS)"
    pm, mm = summary.get("predicted_peak_memory_bytes"), summary.get("measured_peak_memory_bytes")
    table.add_row(mem_label, gib(pm) if pm is not None else "-", gib(mm) if mm is not None else "-", _ratio(mm, pm))
    pt, mt = summary.get("predicted_tokens_per_s"), summary.get("measured_tokens_per_s")
    table.add_row("tokens/s", f"{pt:,.0f}" if pt is not None else "-", f"{mt:,.0f}" if mt is not None else "-",
                  _ratio(mt, pt))
    if "eval_loss" in summary:
        table.add_row("eval loss", "", f"{summary['eval_loss']:.4f}", "")
    if "eval_perplexity" in summary:
        table.add_row("eval perplexity", "", f"{summary['eval_perplexity']:.2f}", "")
    for key, label in (("final_reward_accuracy", "reward accuracy (last step)"),
                       ("eval_reward_accuracy", "eval reward accuracy"), ("eval_reward_margin", "eval reward margin")):
        if key in summary:
            table.add_row(label, "", f"{summary[key]:.3f}", "")
    pt_bytes, mt_bytes = summary.get("predicted_peak_memory_bytes"), summary.get("measured_peak_tensor_bytes")
    if mt_bytes is not None:
        table.add_row("peak live tensor bytes", gib(pt_bytes) if pt_bytes is not None else "-", gib(mt_bytes),
                      _ratio(mt_bytes, pt_bytes))
    return table


def print_run_summary(summary: dict[str, Any], *, on_cuda: bool) -> None:
    Console().print(run_summary_table(summary, on_cuda=on_cuda))
