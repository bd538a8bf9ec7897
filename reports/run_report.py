"""The end of `ftplan run`: each measured figure beside the planner's figure for the same quantity.

Rows come from run_summary.json's fields (runner.summary). A ratio is printed only where both sides measure the
same thing: tensor bytes against tensor bytes, allocator reservation against tensors plus the planner's
allocator reserve, the driver's view against the planner's total, step time against the time model where that
model's efficiency for the device is calibrated or published. RSS has no planner figure and gets no ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from reports.fmt import gib

CALIBRATE_HINT = ("calibrate: `ftplan profile run ... --calibrate cal.json`, then `ftplan run ... "
                  "--calibration cal.json`")


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    quantity: str
    predicted: str = "-"
    measured: str = "-"
    ratio: str = "-"
    note: str = ""


def _ratio(measured: float | None, predicted: float | None) -> str:
    if measured is None or not predicted:
        return "-"
    return f"{measured / predicted:.2f}x"


def _gib(n: float | None) -> str:
    """GiB, or MiB below one GiB (the small models of CPU runs)."""
    if n is None:
        return "-"
    return gib(n) if abs(n) >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _pair(quantity: str, s: dict[str, Any], measured_key: str, predicted_key: str, note: str) -> Row:
    m, p = s.get(measured_key), s.get(predicted_key)
    return Row(quantity=quantity, predicted=_gib(p), measured=_gib(m), ratio=_ratio(m, p), note=note)


def memory_rows(s: dict[str, Any]) -> list[Row]:
    on_cuda = bool(s.get("on_cuda"))
    seq = s.get("seq_len_memory_measured")
    at = f"; planner at seq {seq}" if seq is not None and seq != s.get("seq_len_planned") else ""
    if on_cuda:
        how = "torch.cuda.max_memory_allocated"
    else:
        how = f"live storages over steps 1-{s.get('peak_tensor_steps')} ({s.get('peak_tensor_source')})"
    rows = [_pair("peak tensor memory, most loaded rank", s, "peak_tensor_bytes_measured",
                  "peak_tensor_bytes_predicted", how + at)]
    if on_cuda:
        rows += [
            _pair("peak reserved by PyTorch's allocator", s, "cuda_reserved_peak_bytes_measured",
                  "cuda_reserved_peak_bytes_predicted", "torch.cuda.max_memory_reserved; planner: tensors + "
                  "allocator reserve"),
            _pair("CUDA context, NCCL and library workspaces", s, "cuda_non_torch_bytes_measured",
                  "cuda_context_bytes_predicted", "driver's used minus PyTorch's reserved, max over step ends"),
            _pair("device memory used (nvidia-smi)", s, "device_used_bytes_measured", "device_used_bytes_predicted",
                  "cudaMemGetInfo total - free, max over step ends (every process on the GPU); planner: total"),
        ]
    host = "host RAM: CPU copies, offloaded states, pinned buffers" if on_cuda else \
        "tensors plus allocator slack and library buffers"
    since = "" if s.get("rss_peak_since_baseline", True) else "; lifetime peak RSS (VmHWM could not be reset)"
    rows.append(Row(quantity="RSS above baseline, most loaded rank", measured=_gib(s.get("rss_above_baseline_bytes")),
                    note=f"peak RSS minus RSS before the model was loaded: {host}; no planner figure{since}"))
    return rows


def _basis_note(s: dict[str, Any]) -> str:
    basis, eff, device = s.get("time_model_basis"), s.get("compute_efficiency"), s.get("device")
    if basis == "calibration":
        return f"time model calibrated for {device} (compute efficiency {eff:.2f})"
    if basis == "published":
        return (f"time model: published default efficiency {eff:.2f} for {device} (Megatron-class runs; "
                "HF + peft runs are often slower)")
    return f"time model not calibrated for {device} (placeholder efficiency {eff:.2f}), so no ratio; {CALIBRATE_HINT}"


def speed_rows(s: dict[str, Any]) -> list[Row]:
    timed, warm = s.get("steps_timed", 0), s.get("steps_warmup", 0)
    calibrated = bool(s.get("time_model_calibrated"))
    if not timed:
        note = f"no step after the {warm} warm-up steps: run more steps to time"
    else:
        note = f"median of {timed} steps after {warm} warm-up steps; " + _basis_note(s)
        seq = s.get("seq_len_time_measured")
        if seq is not None and seq != s.get("seq_len_planned"):
            note += f"; planner at seq {seq} (padded width that ran)"
    mt, pt = s.get("step_time_s_median_measured"), s.get("step_time_s_predicted")
    mk, pk = s.get("tokens_per_s_measured"), s.get("tokens_per_s_predicted")
    no_ratio = "not calibrated"
    return [
        Row(quantity="step time", predicted="-" if pt is None else f"{pt:.3f} s",
            measured="-" if mt is None else f"{mt:.3f} s", ratio=_ratio(mt, pt) if calibrated else no_ratio,
            note=note),
        Row(quantity="tokens/s (padded, all ranks)", predicted="-" if pk is None else f"{pk:,.0f}",
            measured="-" if mk is None else f"{mk:,.0f}", ratio=_ratio(mk, pk) if calibrated else no_ratio,
            note="padded positions of every rank, as the planner counts tokens" if timed else ""),
    ]


def summary_rows(s: dict[str, Any]) -> list[Row]:
    rows = memory_rows(s) + speed_rows(s)
    if "eval_loss" in s:
        rows.append(Row(quantity="eval loss", measured=f"{s['eval_loss']:.4f}", predicted=""))
    if "eval_perplexity" in s:  # not for rm / dpo, whose losses are no token cross-entropy
        rows.append(Row(quantity="eval perplexity", measured=f"{s['eval_perplexity']:.2f}", predicted=""))
    for key, label in (("final_reward_accuracy", "reward accuracy (last step)"),
                       ("eval_reward_accuracy", "eval reward accuracy"), ("eval_reward_margin", "eval reward margin")):
        if key in s:
            rows.append(Row(quantity=label, measured=f"{s[key]:.3f}", predicted=""))
    return rows


def run_summary_table(summary: dict[str, Any]) -> Table:
    """Four columns of figures; what each row compares is printed under it (`summary_notes`)."""
    table = Table(title=f"ftplan run {summary['plan']} on {summary.get('device', '?')}: {summary['steps']} steps")
    for name, justify in (("quantity", "left"), ("predicted", "right"), ("measured", "right"),
                          ("measured / predicted", "right")):
        table.add_column(name, justify=justify)
    for r in summary_rows(summary):
        table.add_row(r.quantity, r.predicted, r.measured, r.ratio)
    return table


def summary_notes(summary: dict[str, Any]) -> list[str]:
    return [f"{r.quantity}: {r.note}" for r in summary_rows(summary) if r.note]


def print_run_summary(summary: dict[str, Any]) -> None:
    console = Console()
    console.print(run_summary_table(summary))
    for line in summary_notes(summary):
        console.print(f"- {line}", highlight=False, markup=False)
