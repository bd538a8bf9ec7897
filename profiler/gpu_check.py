"""The GPU session's check (issues 24 and 27): what only a GPU can confirm, measured in one command within a wall
budget, written for the README.

benchmarks/gpu_check.py runs it (its docstring holds the device command line). Phases, in order, each guarded: one
that fails is recorded with its cause and the rest go on; one the budget cannot hold is recorded as skipped, and a
child that outlives the budget is stopped; the summary (summary.json) is written again after every phase and every
plan, so a run cut short still leaves what it measured.
1. environment: `nvidia-smi -q` excerpts (nvidia-smi.txt holds the whole report) and the device's memory in use
   before any process; from a child python: torch, CUDA, the libraries' versions and where they load from (the
   carried wheels or the image's) beside requirements-lock.txt's, and torch.cuda.get_device_properties.
2. device_fit: `fit_cuda_device(real_steps=False)` (profiler/device_fit_cuda.py) in a child python, its file written
   as `ftplan profile calibrate --device` writes it (<GPU>.json, which a later session can commit as a measured fit),
   and its constants beside the catalog's (planner/gpus.py, planner/compute.py).
3. steps: real single-GPU steps through the worker `ftplan profile run` starts (profiler.launch: torchrun, 1 warm-up
   step, then measured steps) of full-size models built from their config with random weights (no download),
   cheapest first, each beside ftplan's prediction of the same plan: max_memory_allocated, max_memory_reserved, the
   device's memory in use (the three readings, planner/memory.py MemoryBreakdown) and the step time, with the
   catalog's constants and with the fit of phase 2.
4. table: phases 2 and 3 as markdown (reports/gpu_check_table.py), in table.md and in the summary.
This process never initializes CUDA: the GPU work runs in children (profiler/gpu_check_child.py, and the worker's
torchrun), so each plan's device reading holds its own process alone (the driver's count covers every process on the
board). The plans are profiler/gpu_check_plans.py's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from planner.strategy import TrainConfig
from profiler.gpu_check_child import LIBRARIES
from profiler.gpu_check_plans import GPU_PLANS, SMOKE_CONFIGS, SMOKE_PLANS, StepPlan

SUMMARY_FILE = "summary.json"
TABLE_FILE = "table.md"
SMI_FILE = "nvidia-smi.txt"
PHASES = ("environment", "device_fit", "steps", "table")
# The device tool's rules for what comes back from $OUT (the device README's limits table): at most 8 files, names
# of letters, digits, '.', '_' and '-', no more than 2 folders down.
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_OUT_FILES = 8
MAX_OUT_FOLDERS = 2
# The fit phase's most: torch's start and the bursts (16 shapes x (0.25 s idle + 6 bursts): about 10 s), the
# sustained phase (SustainedPhase.added_s(16) = 68 s), attention, bandwidth, elementwise and host probes (seconds).
FIT_NEEDS_S = 100.0
ENV_CHILD_S = 90.0  # torch's import and the device's properties
RESERVE_S = 5.0  # left for the table and the last summary when a child is stopped at the budget


class BudgetStop(Exception):
    """A child stopped because the budget ran out."""


# ----------------------------------------------------------------------------------------------- the seams

def run_child(args: list[str], timeout_s: float) -> str:
    """`python -m profiler.gpu_check_child ARGS` (a fresh process: CUDA starts there, not here); its stdout. BudgetStop
    when it runs past `timeout_s` (it is killed: it starts no process of its own), PlanError with its cause when it
    fails."""
    from profiler.launcher import failure_cause, offline_env

    cmd = [sys.executable, "-m", "profiler.gpu_check_child", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout_s),
                              cwd=Path(__file__).resolve().parent.parent, env=offline_env())
    except subprocess.TimeoutExpired:
        raise BudgetStop(f"stopped after {timeout_s:.0f} s (the budget)") from None
    if proc.returncode != 0:
        raise PlanError(f"{' '.join(args[:1])} child failed (exit {proc.returncode}): "
                        f"{failure_cause(proc.stderr + proc.stdout)}")
    return proc.stdout


def launch_plan(cfg: TrainConfig, *, warmup_steps: int, steps: int, timeout_s: float) -> Any:
    from profiler.launch import launch

    return launch(cfg, warmup_steps=warmup_steps, steps=steps, timeout_s=timeout_s)


def nvidia_smi(args: list[str]) -> str:
    from profiler.nvidia_smi import run_nvidia_smi

    return run_nvidia_smi(args)


@dataclass(frozen=True, kw_only=True)
class Seams:
    """What the check calls outside itself (tests fill them with a simulated board: tests/profiler/test_gpu_check.py),
    and the table's renderer, which reports/ owns (profiler imports no reports: benchmarks/gpu_check.py passes it)."""

    child: Callable[[list[str], float], str] = run_child
    launch: Callable[..., Any] = launch_plan
    nvidia_smi: Callable[[list[str]], str] = nvidia_smi
    clock: Callable[[], float] = time.monotonic
    markdown: Callable[[dict[str, Any]], str] | None = None


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    out_dir: Path
    budget_s: float = 420.0
    smoke: bool = False  # the CPU and the tiny model (SMOKE_PLANS) instead of the GPU plans
    plans: tuple[str, ...] = ()  # labels to run (default: all of the mode's plans)
    steps: int = 3
    warmup_steps: int = 1
    gpu: str | None = None  # the catalog GPU (default: read from nvidia-smi's board name)


@dataclass
class Check:
    """One run's state: the summary being written, the clock and what earlier phases found."""

    opts: CheckOptions
    seams: Seams
    started: float
    summary: dict[str, Any] = field(default_factory=dict)
    gpu: str | None = None
    fit_constants: dict[str, Any] | None = None

    def left_s(self) -> float:
        return self.opts.budget_s - (self.seams.clock() - self.started)

    def flush(self) -> None:
        from planner.atomic import write_text_atomic

        write_text_atomic(self.opts.out_dir / SUMMARY_FILE, json.dumps(self.summary, indent=1, default=str) + "\n")


# ----------------------------------------------------------------------------------------------- phases

def selected_plans(opts: CheckOptions) -> tuple[StepPlan, ...]:
    """The mode's plans, or those `opts.plans` names (in the mode's order); PlanError for an unknown label."""
    plans = SMOKE_PLANS if opts.smoke else GPU_PLANS
    known = {p.label for p in plans}
    unknown = [label for label in opts.plans if label not in known]
    if unknown:
        raise PlanError(f"unknown plan {unknown[0]!r}: the {'smoke' if opts.smoke else 'GPU'} plans are "
                        f"{', '.join(p.label for p in plans)}")
    return tuple(p for p in plans if not opts.plans or p.label in opts.plans)


def locked_versions(lock: Path) -> dict[str, str]:
    """requirements-lock.txt's pins of LIBRARIES (the versions the suite and the planner's readings were taken
    with)."""
    wanted = {re.sub(r"[-_.]+", "_", n).lower() for n in LIBRARIES}
    out = {}
    for line in lock.read_text().splitlines() if lock.is_file() else ():
        name, _, version = line.partition("==")
        key = re.sub(r"[-_.]+", "_", name.strip()).lower()
        if version and key in wanted:
            out[key] = version.strip()
    return out


def environment_phase(check: Check) -> dict[str, Any]:
    from profiler.device_fit_cuda import catalog_gpu_name
    from profiler.nvidia_smi import MEMORY_QUERY, excerpts, parse_memory_query, parse_query_q

    out: dict[str, Any] = {"errors": {}}
    try:
        text = check.seams.nvidia_smi(["-q"])
        from planner.atomic import write_text_atomic

        write_text_atomic(check.opts.out_dir / SMI_FILE, text)
        out["nvidia_smi"] = excerpts(parse_query_q(text))
    except PlanError as exc:
        out["errors"]["nvidia_smi"] = str(exc)
    try:
        out["memory_before"] = parse_memory_query(check.seams.nvidia_smi(MEMORY_QUERY))
    except PlanError as exc:
        out["errors"]["memory_before"] = str(exc)
    try:
        torch_env = json.loads(check.seams.child(["env"], min(ENV_CHILD_S, check.left_s() - RESERVE_S))
                               .strip().splitlines()[-1])
        out["torch"] = torch_env
    except (PlanError, BudgetStop, ValueError, IndexError) as exc:
        out["errors"]["torch"] = f"{type(exc).__name__}: {exc}"
    lock = locked_versions(Path(__file__).resolve().parent.parent / "requirements-lock.txt")
    running = out.get("torch", {}).get("libraries", {})
    out["versions"] = {name: {"running": running.get(name, {}).get("version"), "locked": lock.get(name)}
                       for name in sorted(set(lock) | set(running))}
    if check.opts.smoke:
        check.gpu = "CPU"
    elif check.opts.gpu:
        check.gpu = check.opts.gpu
    else:
        board = out.get("memory_before") or {}
        props = out.get("torch", {}).get("device_properties") or {}
        name, total = board.get("name") or props.get("name"), board.get("total_bytes") or props.get("total_memory")
        if name:
            try:
                check.gpu = catalog_gpu_name(name, int(total or 0))
            except PlanError as exc:
                out["errors"]["gpu"] = str(exc)
    out["gpu"] = check.gpu
    return out


def fit_comparison(values: dict[str, Any], gpu_name: str) -> list[dict[str, Any]]:
    """The fit's constants beside the catalog's for the same board: (name, measured, catalog, unit) rows; catalog None
    where the catalog has no such figure."""
    from planner.compute import compute_efficiency
    from planner.gpus import GPUS

    gpu = GPUS[gpu_name]
    copy_rate = values.get("hbm_bytes_per_s")
    share = values.get("elementwise_bandwidth_fraction")
    rows = [("gemm_efficiency", values.get("gemm_efficiency"), compute_efficiency(gpu.name, fitted=gpu.gemm_efficiency),
             "of the dense 16-bit peak, sustained (MSMF)"),
            ("gemm_burst_efficiency", values.get("gemm_burst_efficiency"), None,
             "of the peak, bursts near boost (MAMF), for information"),
            ("gemm_half_rate_inner", values.get("gemm_half_rate_inner"), gpu.gemm_half_rate_inner, "inner size k0"),
            ("attention_efficiency", values.get("attention_efficiency"), gpu.attention_efficiency,
             "of the peak, causal SDPA forward + backward"),
            ("hbm_bytes_per_s", copy_rate, gpu.hbm_bytes_per_s, "bytes/s: a copy's read + write vs the datasheet"),
            ("elementwise_bandwidth_fraction", share, gpu.elementwise_bandwidth_fraction,
             "of hbm_bytes_per_s, eager RMSNorm forward + backward"),
            ("elementwise_bytes_per_s", copy_rate * share if copy_rate and share else None, gpu.elementwise_bytes_per_s,
             "bytes/s the memory-bound kernels reach"),
            ("host_op_s", values.get("host_op_s"), gpu.host_op_s, "seconds of host time per eager op")]
    return [{"name": n, "measured": m, "catalog": c, "ratio": m / c if m is not None and c else None, "unit": u}
            for n, m, c, u in rows]


def device_fit_phase(check: Check) -> dict[str, Any]:
    from planner.device_fit_file import load

    t0 = check.seams.clock()
    answer = json.loads(check.seams.child(["fit", "--out-dir", str(check.opts.out_dir.resolve())],
                                          check.left_s() - RESERVE_S).strip().splitlines()[-1])
    fit = load(Path(answer["path"]))
    if check.gpu is None:
        check.gpu = fit.device
    # the steps predict with the fit only for the board it measured (--gpu may name another catalog entry)
    check.fit_constants = fit.constants() if fit.device == check.gpu else None
    values = fit.values
    windows = values.get("gemm_windows") or []
    settle = values.get("gemm_settle") or {}
    return {"file": Path(answer["path"]).name, "gpu": fit.device, "device_name": values.get("device_name"),
            "wall_s": check.seams.clock() - t0, "fit_s": answer.get("fit_s"),
            "comparison": fit_comparison(values, fit.device),
            "settle": {k: settle.get(k) for k in ("seconds", "reason", "chunks", "flops_per_s", "before", "after")},
            "windows_steady": sum(1 for w in windows if w.get("steady")), "windows": len(windows),
            "windows_drop_max": max((w.get("drop", 0.0) for w in windows), default=None),
            "windows_spread_max": max((w.get("spread", 0.0) for w in windows), default=None)}


def plan_config(plan: StepPlan, gpu: str, model: str) -> TrainConfig:
    from planner.build import build_config

    return build_config(model=model, gpus=f"1x{gpu}", method=plan.method, precision=plan.precision,
                        micro_batch=plan.micro_batch, grad_accum=1, seq_len=plan.seq_len, grad_ckpt=plan.grad_ckpt,
                        check=False)


def predicted(cfg: TrainConfig, fit_constants: dict[str, Any] | None) -> dict[str, Any]:
    """ftplan's three readings and step time of `cfg` (the catalog's constants), and the step time with the fit's."""
    from planner.gpus import cluster_with_device_fit
    from planner.memory import memory_per_gpu
    from planner.timing import step_time

    mem = memory_per_gpu(cfg)
    readings = mem.readings()
    t = step_time(cfg)
    out = {"allocated_bytes": readings["allocated"], "reserved_bytes": readings["reserved"],
           "device_bytes": readings["device"], "fit_bytes": round(mem.fit_bytes), "peak_phase": mem.phase,
           "other_items_bytes": {k: round(v) for k, v in mem.other_items.items()},
           "step_time_s": t.step_time_s, "time_breakdown_s": dict(t.breakdown_s), "step_time_fitted_s": None}
    if fit_constants is not None:
        fitted = replace(cfg, cluster=cluster_with_device_fit(cfg.cluster, fit_constants))
        out["step_time_fitted_s"] = step_time(fitted).step_time_s
    return out


def relative_error(pred: float | None, meas: float | None) -> float | None:
    return None if pred is None or not meas else pred / meas - 1.0


def measured(result: Any) -> dict[str, Any]:
    """The worker's readings of the one rank (profiler/worker.py)."""
    r = result.ranks[0]
    return {"allocated_bytes": r.get("peak_allocated_bytes"), "reserved_bytes": r.get("peak_reserved_bytes"),
            "device_bytes": r.get("device_used_bytes"), "non_torch_bytes": r.get("non_torch_bytes"),
            "step_time_s": r.get("step_time_s"), "step_times_s": r.get("step_times_s"),
            "tokens_per_s": r.get("tokens_per_s"), "mfu": r.get("mfu"), "versions": r.get("versions")}


def errors(pred: dict[str, Any], meas: dict[str, Any]) -> dict[str, float | None]:
    out = {k: relative_error(pred[f"{k}_bytes"], meas[f"{k}_bytes"]) for k in ("allocated", "reserved", "device")}
    out["step_time"] = relative_error(pred["step_time_s"], meas["step_time_s"])
    out["step_time_fitted"] = relative_error(pred["step_time_fitted_s"], meas["step_time_s"])
    return out


def _device_used_now(check: Check) -> int | None:
    from profiler.nvidia_smi import MEMORY_QUERY, parse_memory_query

    if check.opts.smoke:
        return None
    try:
        return parse_memory_query(check.seams.nvidia_smi(MEMORY_QUERY))["used_bytes"]
    except PlanError:
        return None


def steps_phase(check: Check) -> dict[str, Any]:
    if check.gpu is None:
        raise PlanError("no catalog GPU for this board (nvidia-smi and torch named none): pass --gpu NAME")
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"gpu": check.gpu, "warmup_steps": check.opts.warmup_steps, "steps": check.opts.steps,
                           "plans": rows}
    check.summary["phases"]["steps"].update(out)
    with tempfile.TemporaryDirectory(prefix="ftplan-gpu-check-") as tmp:
        for name, config in SMOKE_CONFIGS.items():
            (Path(tmp) / f"{name}.json").write_text(json.dumps(config))
        for plan in selected_plans(check.opts):
            row: dict[str, Any] = {"label": plan.label, "model": plan.model, "tests": plan.tests}
            rows.append(row)
            left = check.left_s()
            if left < plan.needs_s:
                row.update(status="skipped", reason=f"budget: {left:.0f} s left, the plan needs {plan.needs_s:.0f} s")
                check.flush()
                continue
            t0 = check.seams.clock()
            try:
                model = str(Path(tmp) / f"{plan.model}.json") if plan.model in SMOKE_CONFIGS else plan.model
                cfg = plan_config(plan, check.gpu, model)
                row["plan"] = str(cfg)
                row["predicted"] = predicted(cfg, check.fit_constants)
                row["device_used_before_bytes"] = _device_used_now(check)
                result = check.seams.launch(cfg, warmup_steps=check.opts.warmup_steps, steps=check.opts.steps,
                                            timeout_s=max(1.0, check.left_s() - RESERVE_S))
                row["measured"] = measured(result)
                row["errors"] = errors(row["predicted"], row["measured"])
                row["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - one plan's failure is recorded; the next plan runs
                # a run the budget cut short (launch stops torchrun at its timeout) is "stopped", not "failed"
                row.update(status="stopped" if check.left_s() <= RESERVE_S + 1.0 else "failed", error=_one_line(exc),
                           traceback=_traceback_tail())
            row["wall_s"] = check.seams.clock() - t0
            check.flush()
    return out


def table_phase(check: Check) -> dict[str, Any]:
    from planner.atomic import write_text_atomic

    if check.seams.markdown is None:
        raise PlanError("no table renderer was given (benchmarks/gpu_check.py passes reports.gpu_check_table's)")
    text = check.seams.markdown(check.summary)
    write_text_atomic(check.opts.out_dir / TABLE_FILE, text)
    return {"file": TABLE_FILE, "markdown": text}


# ----------------------------------------------------------------------------------------------- the run

def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def _traceback_tail(limit_chars: int = 2000) -> str:
    return traceback.format_exc()[-limit_chars:]


PHASE_FUNCTIONS: dict[str, tuple[Callable[[Check], dict[str, Any]], float]] = {
    # name: (function, seconds the budget must still hold to start it)
    "environment": (environment_phase, 0.0), "device_fit": (device_fit_phase, FIT_NEEDS_S),
    "steps": (steps_phase, 0.0), "table": (table_phase, 0.0)}


def out_files(out_dir: Path) -> dict[str, Any]:
    """The files under `out_dir` and what breaks the device tool's rules (names, count, depth)."""
    files = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())
    problems = [f"{p}: a name outside letters, digits, '.', '_', '-'" for p in files
                if not all(OUT_NAME.match(part) for part in p.parts)]
    problems += [f"{p}: more than {MAX_OUT_FOLDERS} folders down" for p in files if len(p.parts) - 1 > MAX_OUT_FOLDERS]
    if len(files) > MAX_OUT_FILES:
        problems.append(f"{len(files)} files: more than {MAX_OUT_FILES} come back")
    return {"files": [str(p) for p in files], "problems": problems}


def run_check(opts: CheckOptions, seams: Seams | None = None) -> dict[str, Any]:
    """Every phase in order within the budget; the summary (also in opts.out_dir/summary.json). Bad options raise
    PlanError before anything is written."""
    seams = seams or Seams()
    if not opts.budget_s > 0:
        raise PlanError(f"--budget-s must be a positive number of seconds, got {opts.budget_s:g}")
    if opts.steps < 1 or opts.warmup_steps < 0:
        raise PlanError("--steps must be at least 1 and the warm-up steps at least 0")
    selected_plans(opts)
    if opts.gpu is not None:
        from planner.gpus import gpu_from_name

        opts = replace(opts, gpu=gpu_from_name(opts.gpu).name)  # an unknown name lists the catalog's
    check = Check(opts=opts, seams=seams, started=seams.clock())
    check.summary = {"check": "ftplan GPU check (issues 24 and 27)", "mode": "smoke" if opts.smoke else "gpu",
                     "budget_s": opts.budget_s, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "phases": {name: {"status": "pending"} for name in PHASES}}
    check.flush()
    for name in PHASES:
        fn, needs_s = PHASE_FUNCTIONS[name]
        record = check.summary["phases"][name]
        left = check.left_s()
        if name != "table" and left < needs_s:
            record.update(status="skipped", reason=f"budget: {left:.0f} s left, the phase needs {needs_s:.0f} s")
            check.flush()
            continue
        t0 = seams.clock()
        record["status"] = "running"
        try:
            record.update(fn(check))
            record["status"] = "ok"
        except BudgetStop as exc:
            record.update(status="stopped", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a phase's failure is recorded; the next phase runs
            record.update(status="failed", error=_one_line(exc), traceback=_traceback_tail())
        record["seconds"] = seams.clock() - t0
        check.flush()
    check.summary["elapsed_s"] = seams.clock() - check.started
    check.summary["out_files"] = out_files(opts.out_dir)
    check.flush()
    return check.summary
