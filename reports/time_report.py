"""Rich renderables for the time model: a step's breakdown with bars, and the job's time."""

from __future__ import annotations

from rich.table import Table

from planner.timing import JobTime, StepTime
from reports.fit import Bar

_LABELS = {"compute": "compute", "recompute": "recompute (checkpointing)", "pipeline_bubble": "pipeline bubble",
           "dequantize": "QLoRA dequantization", "tp_comm": "tensor-parallel comm", "pp_comm": "pipeline p2p",
           "dp_comm": "data-parallel comm (exposed)", "offload": "offload (PCIe, CPU Adam, NVMe)",
           "optimizer": "optimizer step (GPU)", "framework": "framework (op dispatch, ZeRO-3/FSDP hooks)",
           "generation": "generation (rollouts)", "scoring": "scoring (reference, old policy, rewards)",
           "weight_sync": "weight sync to vLLM"}
BAR_WIDTH = 24


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of eighth-blocks for a share in [0, 1]."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + ("" if rest == 0 else " ▏▎▍▌▋▊▉"[rest])


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def time_table(t: StepTime, title: str, job: JobTime | None = None) -> Table:
    """Where one step's time goes, then tokens/s, MFU and (given a job size) job time and GPU-hours."""
    table = Table(title=title, title_justify="left")
    for col, justify in (("part", "left"), ("time", "right"), ("share", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    for key, seconds in t.breakdown_s.items():
        if seconds <= 0:
            continue
        share = seconds / t.step_time_s
        table.add_row(_LABELS.get(key, key), duration(seconds), f"{100 * share:.0f}%", Bar(share, BAR_WIDTH))
    table.add_row("step", duration(t.step_time_s), "100%", "", style="bold")
    table.add_row("tokens/s (job)", f"{t.tokens_per_s:,.0f}", "", "")
    table.add_row("samples/s (job)", f"{t.samples_per_s:,.2f}", "", "")
    table.add_row("MFU", f"{100 * t.mfu:.1f}%", "", f"HFU {100 * t.hfu:.1f}%")
    if job is not None:
        table.add_row("job", duration(job.time_s), "", f"{job.steps:,} steps")
        table.add_row("GPU-hours", f"{job.gpu_hours:,.1f}", "", "")
    return table
