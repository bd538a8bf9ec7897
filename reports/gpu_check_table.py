"""The GPU check's summary (profiler/gpu_check.py) as markdown for the README: the device fit beside the catalog, and
each plan's three memory readings and step time beside ftplan's."""

from __future__ import annotations

from typing import Any

from reports.fmt import gib


def _num(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if name.endswith("bytes_per_s"):
        return f"{value / 1e9:,.0f} GB/s"
    if name.endswith("_s"):
        return f"{value * 1e6:.2f} us"
    if name.endswith("inner"):
        return f"{value:.0f}"
    return f"{value:.3f}"


def _err(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _bytes(x: float | None) -> str:
    return "n/a" if x is None else gib(x).replace(" GiB", "")


def _status_line(name: str, record: dict[str, Any]) -> str | None:
    status = record.get("status")
    if status == "ok":
        return None
    why = record.get("reason") or record.get("error") or ""
    return f"- {name}: **{status}**" + (f": {why}" if why else "")


def environment_lines(env: dict[str, Any]) -> list[str]:
    smi = env.get("nvidia_smi") or {}
    torch_env = env.get("torch") or {}

    def first(*keys: str) -> str | None:
        for key in keys:
            for k, v in smi.items():
                if k == key or k.endswith("/" + key):
                    return v
        return None

    board = torch_env.get("device_name") or first("Product Name") or "no GPU"
    versions = ", ".join(f"{n} {v['running']}" + ("" if v.get("locked") in (None, v["running"].split("+")[0])
                                                  else f" (locked {v['locked']})")
                         for n, v in (env.get("versions") or {}).items() if v.get("running"))
    parts = [f"{board} (catalog {env.get('gpu')})", f"driver {first('Driver Version') or 'n/a'}",
             f"CUDA {first('CUDA Version') or torch_env.get('torch_cuda') or 'n/a'}",
             f"power cap {first('Current Power Limit', 'Power Limit') or 'n/a'}",
             f"max SM clock {first('Max Clocks/SM') or 'n/a'}"]
    return ["Environment: " + "; ".join(parts) + ".", f"Libraries: {versions or 'n/a'}."]


def fit_lines(fit: dict[str, Any]) -> list[str]:
    lines = [f"### Device fit: `fit_cuda_device(real_steps=False)` on {fit.get('device_name')} ({fit.get('gpu')}), "
             f"{fit.get('wall_s', 0.0):.0f} s, file {fit.get('file')}", "",
             "| constant | measured | catalog | measured / catalog | what |", "|---|---:|---:|---:|---|"]
    for row in fit.get("comparison", ()):
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}"
        lines.append(f"| {row['name']} | {_num(row['name'], row['measured'])} | "
                     f"{_num(row['name'], row['catalog'])} | {ratio} | {row['unit']} |")
    settle = fit.get("settle") or {}
    seconds = settle.get("seconds")
    lines += ["", f"Settle: {'n/a' if seconds is None else f'{seconds:.1f} s'} ({settle.get('reason')}); "
                  f"{fit.get('windows_steady')} of {fit.get('windows')} windows steady (largest drop "
                  f"{_err(fit.get('windows_drop_max'))}, largest spread {_err(fit.get('windows_spread_max'))})."]
    return lines


def steps_lines(steps: dict[str, Any]) -> list[str]:
    lines = [f"### Real steps on 1x{steps.get('gpu')}: {steps.get('warmup_steps')} warm-up + {steps.get('steps')} "
             "measured (random weights built from config; profiler.launch, the worker of `ftplan profile run`)", "",
             "| plan | allocated GiB: measured / ftplan (error) | reserved | device (nvidia-smi) | step s: measured / "
             "ftplan (error) | ftplan with the fit (error) |", "|---|---:|---:|---:|---:|---:|"]
    for row in steps.get("plans", ()):
        name = f"{row['label']}" + (f" `{row['plan']}`" if row.get("plan") else "")
        if row.get("status") != "ok":
            why = row.get("reason") or row.get("error") or ""
            lines.append(f"| {name} | {row.get('status')}: {why[:160]} | | | | |")
            continue
        p, m, e = row["predicted"], row["measured"], row["errors"]
        cells = [f"{_bytes(m[f'{k}_bytes'])} / {_bytes(p[f'{k}_bytes'])} ({_err(e[k])})"
                 for k in ("allocated", "reserved", "device")]
        step = f"{m['step_time_s']:.3f} / {p['step_time_s']:.3f} ({_err(e['step_time'])})"
        fitted = ("n/a" if p.get("step_time_fitted_s") is None
                  else f"{p['step_time_fitted_s']:.3f} ({_err(e['step_time_fitted'])})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {step} | {fitted} |")
    return lines


def markdown(summary: dict[str, Any]) -> str:
    """The README's tables for a GPU check summary; phases that did not run say why."""
    phases = summary.get("phases", {})
    lines = [f"## GPU check ({summary.get('mode')}), {summary.get('started_at')}, budget "
             f"{summary.get('budget_s', 0.0):.0f} s", ""]
    env = phases.get("environment", {})
    if env.get("status") == "ok":
        lines += environment_lines(env) + [""]
    fit = phases.get("device_fit", {})
    if fit.get("status") == "ok":
        lines += fit_lines(fit) + [""]
    steps = phases.get("steps", {})
    if steps.get("plans"):
        lines += steps_lines(steps) + [""]
    notes = [line for name, record in phases.items() if name != "table"
             for line in [_status_line(name, record)] if line]
    if notes:
        lines += ["Phases that did not complete:", *notes, ""]
    return "\n".join(lines)
