"""Profiles for people: measured beside predicted, per category (dry run) or per rank (real steps)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from reports.fmt import gib, pct

CATEGORIES = ("weights", "gradients", "optimizer", "activations", "other")


def _rel(pred: float, meas: float) -> str:
    if meas == 0:
        return "" if pred == 0 else "n/a"
    return f"{100 * (pred / meas - 1):+.1f}%"


def dry_run_json(result: Any, predicted: Any, cfg_name: str) -> dict[str, Any]:
    """`measured_peak_bytes` (total + categories: live fake tensors) and `predicted_peak_bytes` (the planner's
    allocated reading, its categories without the allocator's reserve, the CUDA context and NCCL's buffers, which
    `predicted_readings` adds)."""
    pred = predicted.allocated_dict()
    return {"config": cfg_name, "measured_peak_bytes": dict(result.peak_bytes),
            "measured_peak_phase": result.peak_phase,
            "predicted_peak_bytes": pred["total"], "predicted_bytes": pred, "predicted_peak_phase": predicted.phase,
            "predicted_readings": predicted.readings(),
            "relative_error": {k: (pred[k] / result.peak_bytes[k] - 1) if result.peak_bytes[k] else None
                               for k in (*CATEGORIES, "total")},
            "params_total": result.params_total, "params_trainable": result.params_trainable,
            "step_peaks_bytes": list(result.step_peaks_bytes), "wall_s": round(result.wall_s, 2)}


def dry_run_view(result: Any, predicted: Any, cfg_name: str) -> Group:
    pred = predicted.allocated_dict()
    table = Table(title=f"Dry run {cfg_name}: peak of step {len(result.step_peaks_bytes)} "
                        f"(measured in {result.peak_phase}, planner's peak in {predicted.phase})", title_justify="left")
    for col in ("category", "dry run", "planner", "difference", "planner / dry run"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat in (*CATEGORIES, "total"):
        meas, p = result.peak_bytes[cat], pred[cat]
        table.add_row(cat, gib(meas), gib(p), gib(p - meas), _rel(p, meas), style="bold" if cat == "total" else None)
    note = Text(f"{result.params_total:,} parameters, {result.params_trainable:,} trainable; "
                f"{result.wall_s:.1f} s on fake tensors", style="dim")
    if predicted.device > predicted.allocated:
        r = predicted.readings()
        note.append(f"\nthe tensors are the allocated reading; the planner's reserved and device (nvidia-smi) "
                    f"readings, which fake tensors cannot show: {gib(r['reserved'])} and {gib(r['device'])}",
                    style="dim")
    return Group(table, note)


def _readings(result: Any) -> dict[str, float | None]:
    """The most loaded rank's three readings: allocated (tensors), reserved and the device's memory in use (CUDA
    only; profiler/worker.py)."""
    def most(key: str) -> float | None:
        values = [r[key] for r in result.ranks if r.get(key) is not None]
        return max(values) if values else None

    return {"allocated": result.peak_bytes, "reserved": most("peak_reserved_bytes"),
            "device": most("device_used_bytes")}


def run_json(result: Any, predicted: Any, predicted_step_time_s: float | None) -> dict[str, Any]:
    """Memory compared reading by reading (planner/memory.py: allocated <= reserved <= device): the tensors with
    the allocated reading, and on CUDA the allocator's and the driver's peaks with the reserved and device ones."""
    measured, pred = _readings(result), predicted.readings()
    return {"config": str(result.config), "world_size": result.config.world_size,
            "measured_peak_bytes": measured["allocated"], "predicted_peak_bytes": pred["allocated"],
            "predicted_bytes": predicted.allocated_dict(),
            "memory_relative_error": pred["allocated"] / measured["allocated"] - 1,
            "readings": {k: {"measured": measured[k], "predicted": pred[k],
                             "relative_error": None if not measured[k] else pred[k] / measured[k] - 1}
                         for k in pred},
            "step_time_s": result.step_time_s, "predicted_step_time_s": predicted_step_time_s,
            "time_relative_error": (None if predicted_step_time_s is None
                                    else predicted_step_time_s / result.step_time_s - 1),
            "tokens_per_s": result.tokens_per_s, "ranks": list(result.ranks), "versions": result.versions}


def run_view(result: Any, predicted: Any, predicted_step_time_s: float | None) -> Group:
    table = Table(title=f"Profile {result.config}: {result.config.world_size} rank(s)", title_justify="left")
    for col in ("rank", "peak tensors", "peak reserved", "peak RSS", "step", "tokens/s", "MFU"):
        table.add_column(col, justify="right")
    for r in result.ranks:
        table.add_row(str(r["rank"]), gib(r["peak_allocated_bytes"]),
                      "" if r.get("peak_reserved_bytes") is None else gib(r["peak_reserved_bytes"]),
                      gib(r["peak_rss_bytes"]), f"{r['step_time_s']:.3f} s", f"{r['tokens_per_s']:,.0f}",
                      "" if r.get("mfu") is None else pct(r["mfu"]))
    measured, pred = _readings(result), predicted.readings()
    lines = [f"peak {name}: measured {gib(measured[key])}, planner {gib(pred[key])} "
             f"({_rel(pred[key], measured[key])})"
             for key, name in (("allocated", "tensors (allocated)"), ("reserved", "reserved"),
                               ("device", "device memory in use (nvidia-smi)")) if measured[key] is not None]
    if predicted_step_time_s is not None:
        lines.append(f"step: measured {result.step_time_s:.3f} s, planner {predicted_step_time_s:.3f} s "
                     f"({_rel(predicted_step_time_s, result.step_time_s)})")
    return Group(table, Text("\n".join(lines)))


def calibration_view(data: dict[str, Any], path: str) -> Text:
    f, b, a = data["factors"], data["error_before"], data["error_after"]

    def err(d: dict[str, Any], key: str) -> str:
        return "n/a" if d.get(key) is None else pct(d[key])

    factors = ", ".join(f"{k} {v:.4g}" for k, v in f.items() if v is not None)
    return Text(f"calibration written to {path} ({data['profiles']} profile(s)): {factors}\n"
                f"memory error median/worst: before {err(b, 'memory_median_abs')}/{err(b, 'memory_worst_abs')}, "
                f"after {err(a, 'memory_median_abs')}/{err(a, 'memory_worst_abs')}\n"
                f"time error median/worst: before {err(b, 'time_median_abs')}/{err(b, 'time_worst_abs')}, "
                f"after {err(a, 'time_median_abs')}/{err(a, 'time_worst_abs')}")


def accuracy_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Planner vs measured peak memory", title_justify="left")
    for col in ("case", "kind", "measured", "planner", "error"):
        table.add_column(col, justify="left" if col in ("case", "kind") else "right")
    for r in rows:
        table.add_row(r["case"], r["kind"], gib(r["measured"]), gib(r["predicted"]),
                      _rel(r["predicted"], r["measured"]))
    return table


def accuracy_categories_table(rows: list[dict[str, Any]]) -> Table:
    """Per-category planner / dry run - 1 of the rows that carry categories (dry runs)."""
    table = Table(title="Dry runs by category (planner / dry run - 1)", title_justify="left")
    table.add_column("case")
    for cat in (*CATEGORIES, "total"):
        table.add_column(cat, justify="right")
    for r in rows:
        if "categories" not in r:
            continue
        cats = r["categories"]
        table.add_row(r["case"], *(_rel(cats[c][1], cats[c][0]) for c in (*CATEGORIES, "total")))
    return table


def device_fit_view(data: dict[str, Any], path: str) -> Text:
    """The fitted device constants, in the units planner/gpus.py takes them."""
    if data.get("backend") == "cuda" or data.get("device") == "cuda":
        return _cuda_fit_view(data, path)
    lines = [f"CPU device fit written to {path} (per rank = one core):",
             f"  host_op_s             {data['host_op_s'] * 1e6:.2f} us per eager op",
             f"  peak_fp32_flops_per_s {data['peak_fp32_flops_per_s'] / 1e9:.2f} GFLOP/s (large GEMMs)",
             f"  gemm_half_rate_rows   {data['gemm_half_rate_rows']:.1f} rows",
             "  gemm_narrow_cols      " + ", ".join(f"n={n}: {f:.2f}" for n, f in data.get("gemm_narrow_cols", ())),
             "  gemm_narrow_inner     " + ", ".join(f"k={k}: {f:.2f}" for k, f in data.get("gemm_narrow_inner", ())),
             f"  dropout_values_per_s  {data.get('dropout_values_per_s', 0.0) / 1e6:.1f} M values/s",
             f"  hbm_bytes_per_s       {data['hbm_bytes_per_s'] / 1e9:.2f} GB/s (copy, read + write)",
             f"  collective_alpha_s    {data['collective_alpha_s'] * 1e6:.1f} us per gloo all-reduce",
             f"  intra_node_bytes_per_s {data['intra_node_bytes_per_s'] / 1e9:.3f} GB/s (gloo, 2 ranks)",
             f"  busy_comm_factor      {data.get('busy_comm_factor', 1.0):.2f} x (a collective beside compute / alone)",
             f"  sync_call_s           {data.get('sync_call_s', 0.0) * 1e3:.2f} ms more per synchronous call between "
             "compute",
             f"  zero3_module_s        {data.get('zero3_module_s', 0.0) * 1e3:.2f} ms per ZeRO-3 module",
             f"  fsdp_unit_s           {data.get('fsdp_unit_s', 0.0) * 1e3:.2f} ms per FSDP unit"]
    return Text("\n".join(lines))


def _cuda_fit_view(data: dict[str, Any], path: str) -> Text:
    gpu = data.get("gpu") or data["device"]
    lines = [f"CUDA device fit written to {path}: {data['device_name']} x {data['gpus']} (replaces {gpu}):",
             f"  gemm_efficiency        {data['gemm_efficiency']:.3f} of peak (large GEMMs), "
             f"half rate at k = {data['gemm_half_rate_inner']:.0f}"
             + (" (sustained)" if data.get("gemm_timing") == "sustained" else "")]
    if data.get("gemm_burst_efficiency") is not None:
        lines.append(f"  gemm burst             {data['gemm_burst_efficiency']:.3f} of peak (near boost, for "
                     "information)")
    lines += [f"  attention_efficiency   {data['attention_efficiency']:.3f} of peak (causal SDPA, fwd + bwd)",
              f"  hbm_bytes_per_s        {data['hbm_bytes_per_s'] / 1e9:.0f} GB/s (copy, read + write)",
              f"  elementwise share      {data.get('elementwise_bandwidth_fraction', 1.0):.2f} of the copy rate "
              f"(eager RMSNorm forward + backward, counted bytes)",
              f"  host_op_s              {data['host_op_s'] * 1e6:.2f} us per eager op",
              f"  intra_node_bytes_per_s {data['intra_node_bytes_per_s'] / 1e9:.0f} GB/s nominal (NCCL bus bandwidth "
              f"over the link efficiency)"]
    for kind, c in data.get("collectives", {}).items():
        lines.append(f"  {kind:22s} {c['alpha_s'] * 1e6:.1f} us + bus {c['bus_bytes_per_s'] / 1e9:.0f} GB/s")
    for st in data.get("steps", ()):
        lines.append(f"  step {st['engine']:6s} {st['plan']:32s} measured {st['measured_s']:.3f} s, predicted "
                     f"{st['predicted_s']:.3f} s ({st['error']:+.1%})")
    if data.get("steps_error"):
        lines.append(f"  real steps failed: {data['steps_error']}")
    return Text("\n".join(lines))
