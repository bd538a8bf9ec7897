"""Tables fit an 80-column terminal and wrap plan names only at their `-` boundaries, never inside a token
(`Z1-TP1-PP1-DP8-mb1-g` / `a8-adamw_8bit` was the complaint)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from planner.build import build_config
from planner.estimate import Limits
from planner.scaling import scale
from planner.search import SearchSpace, plan
from planner.strategy import Method
from reports.plan_report import plan_view
from reports.scale_report import scale_view
from reports.wrap import HyphenWrapped


def render(renderable, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text().splitlines()


def plan_cells(lines: list[str], header: str, next_header: str, first_col: str) -> list[list[str]]:
    """The plan column's fragments per table row (a row starts where its first column is filled)."""
    head = next(i for i, line in enumerate(lines) if re.search(rf"\b{header}\b", line) and next_header in line)
    start, end = lines[head].index(header), lines[head].index(next_header)
    key = lines[head].index(first_col)
    rows: list[list[str]] = []
    for line in lines[head + 2:]:
        if not line.strip():
            break
        # a plan fragment has no spaces; a wide right-aligned neighbour may start inside the header's span
        found = re.match(r"\S*", line[start:end + 8]) if len(line) > start else None
        fragment = found.group(0) if found else ""
        if line[:start].strip() and line[key:start].strip():
            rows.append([fragment])
        elif fragment and rows:
            rows[-1].append(fragment)
    return rows


def test_hyphen_wrapped_lines() -> None:
    name = HyphenWrapped("Z1-TP1-PP1-DP8-mb1-ga8-adamw_8bit")
    assert name.lines(80) == ["Z1-TP1-PP1-DP8-mb1-ga8-adamw_8bit"]
    assert name.lines(20) == ["Z1-TP1-PP1-DP8-mb1-", "ga8-adamw_8bit"]
    assert name.lines(10) == ["Z1-TP1-", "PP1-DP8-", "mb1-ga8-", "adamw_8bit"]


def check_rows(rows: list[list[str]], names: list[str]) -> None:
    assert [("".join(r)) for r in rows] == names
    for fragments in rows:
        assert all(f.endswith("-") for f in fragments[:-1]), fragments  # broken only after a hyphen


@pytest.mark.parametrize("width", [80, 100])
def test_plan_table_fits_and_wraps_at_hyphens(width: int) -> None:
    base = build_config(model="7b", gpus="8xA800", check=False)
    result = plan(base, SearchSpace(), Limits())
    lines = render(plan_view(result, 3), width)
    assert max(len(line) for line in lines) <= width
    shown, seen = [], {}
    for est in result.plans:
        if seen.get(est.config.method, 0) < 3:
            seen[est.config.method] = seen.get(est.config.method, 0) + 1
            shown.append(str(est.config))
    check_rows(plan_cells(lines, "plan", "GiB/GPU", "method"), shown)


def test_scale_table_fits_and_wraps_at_hyphens() -> None:
    base = build_config(model="7b", gpus="1xA800", method=Method.full, check=False)
    result = scale(base, 16, SearchSpace(methods=(Method.full,)), Limits())
    lines = render(scale_view(result, model="llama-2-7b", gpu="A800", method="full"))
    assert max(len(line) for line in lines) <= 80
    check_rows(plan_cells(lines, "plan", "tokens/s", "GPUs"), [str(p.best.config) for p in result.points])


# --- every report at 80 columns: fewer columns rather than cut ones ----------------------------------------

def _measured_tune(plans: list) -> object:
    from planner.tune_result import TrialRow, TuneResult

    rows = [TrialRow(phase="measured", number=i, state="complete", name=str(est.config), params={"method": "lora"},
                     tokens_per_s=1431.5 + i, peak_bytes=60e9, predicted_tokens_per_s=1500.0,
                     predicted_peak_bytes=62e9, reason="", wall_s=41.3, runnable=True,
                     calibrated_tokens_per_s=1420.0 - i, tokens_per_s_range=(1400.2, 1460.9), steps=3, round=i % 3)
            for i, est in enumerate(plans[:8])]
    rows.append(TrialRow(phase="measured", number=99, state="failed", name=str(plans[0].config) + "-ckpt-full",
                         params={}, tokens_per_s=None, peak_bytes=None, predicted_tokens_per_s=1200.0,
                         predicted_peak_bytes=70e9, wall_s=12.0, runnable=True, round=1,
                         reason="out of memory: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.35 GiB "
                                "total capacity)"))
    return TuneResult(study="llama-2-7b@8xA800-gb64-seq2048", storage="sqlite:///ftplan-tune.db", measured=True,
                      sampler="halving", space_points=4032, runnable_plans=738, best=plans[0], best_row=rows[0],
                      rows=rows, pareto=rows[:3], trials_completed=8, trials_failed=1, trials_infeasible=0,
                      measured_trial_s=530.0,
                      calibration={"from_trials": 8, "factors": {"compute_efficiency": 0.41},
                                   "ratio_by_strategy": {"DDP": 0.98, "Z2": 1.05}, "log_spread": 0.031})


def every_report() -> dict[str, object]:
    """Each report a command prints, built from the planner (and made-up measurements where a report needs
    a run: a tune's measured trials, a dry run, real steps, a run summary)."""
    from types import SimpleNamespace

    from planner.estimate import estimate
    from planner.gpus import GPUS
    from planner.memory import memory_per_gpu
    from planner.models import from_name, model_names
    from reports.catalog_report import gpus_table, models_table
    from reports.emit_report import emit_view
    from reports.memory_report import estimate_view
    from reports.profile_report import calibration_view, device_fit_view, dry_run_view, run_view
    from reports.run_report import run_summary_table
    from reports.time_report import time_table
    from reports.tune_report import tune_view

    base = build_config(model="7b", gpus="8xA800", check=False)
    result = plan(base, SearchSpace(), Limits())
    est = estimate(build_config(model="70b", gpus="8xA800", method=Method.full, zero=3, offload="all"))
    cpu = build_config(model="7b", gpus="1xCPU")
    pred = memory_per_gpu(cpu)
    peaks = {k: v * 1.01 for k, v in pred.as_dict().items()}
    dry = SimpleNamespace(peak_bytes=peaks, peak_phase="backward start", step_peaks_bytes=[1, 2],
                          params_total=6_738_415_616, params_trainable=19_988_480, wall_s=12.3)
    ranks = [{"rank": r, "peak_allocated_bytes": 1.2e9, "peak_reserved_bytes": 1.3e9, "peak_rss_bytes": 2.1e9,
              "step_time_s": 1.234, "tokens_per_s": 1431.0, "mfu": 0.412} for r in range(2)]
    real = SimpleNamespace(config=cpu, peak_bytes=peaks["total"], step_time_s=1.234, ranks=ranks)
    fit = json.loads((Path(__file__).resolve().parents[2] / "benchmarks/measured/cpu_device_fit.json").read_text())
    summary = {"plan": "Z2-TP1-PP1-DP2-mb8-ga1", "steps": 30, "device": "CPU", "on_cuda": False,
               "seq_len_planned": 64, "peak_tensor_bytes_measured": 92 * 2**20,
               "peak_tensor_bytes_predicted": 90 * 2**20,
               "peak_tensor_source": "profiler.tracker.StorageTracker", "peak_tensor_steps": 3,
               "seq_len_memory_measured": 64, "rss_above_baseline_bytes": 256 * 2**20, "rss_peak_since_baseline": True,
               "step_time_s_median_measured": 1.8, "step_time_s_predicted": 0.24, "tokens_per_s_measured": 569.0,
               "tokens_per_s_predicted": 4356.0, "steps_timed": 27, "steps_warmup": 3, "seq_len_time_measured": 64,
               "time_model_calibrated": False, "time_model_basis": "placeholder", "compute_efficiency": 0.3}
    folder = "/a/rather/long/output/folder/for/the/emitted/plan/files"
    return {
        "plan": plan_view(result, 3),
        "estimate": estimate_view(est),
        "time": time_table(est.time, f"Step time: {est.config}"),
        "scale": scale_view(scale(build_config(model="7b", gpus="1xA800", method=Method.full, check=False), 16,
                                  SearchSpace(methods=(Method.full,)), Limits()),
                            model="llama-2-7b", gpu="A800", method="full", files=["ftplan-reports/scale.png"]),
        "tune": tune_view(_measured_tune(result.plans)),
        "dry-run": dry_run_view(dry, pred, str(cpu)),
        "profile-run": run_view(real, pred, 1.1),
        "calibration": calibration_view(
            {"factors": {"activation_multiplier": 1.0213, "compute_efficiency": 0.3412},
             "error_before": {"memory_median_abs": 0.05}, "error_after": {"memory_median_abs": 0.01},
             "profiles": 3}, "/home/someone/.cache/ftplan/calibration-cpu.json"),
        "device-fit": device_fit_view(fit, "/root/.cache/ftplan/device-fit/host-1234abcd/CPU.json"),
        "run-summary": run_summary_table(summary),
        "emit": emit_view(str(est.config), [(Path(folder) / "plan.json", "the plan (read by ftplan run / emit)"),
                                            (Path(folder) / "ds_config.json", "DeepSpeed config")],
                          f"ftplan run {folder}/plan.json --model-path MODEL_DIR --data DATA_FILE",
                          [("torchrun", f"MODEL_PATH=MODEL_DIR DATA=DATA_FILE bash {folder}/launch.sh torchrun")],
                          warnings=("tight: 95% of the GPU",)),
        "models": models_table([from_name(n) for n in model_names()]),
        "gpus": gpus_table(list(GPUS.values())),
    }


REPORTS = every_report()


@pytest.mark.parametrize("name", list(REPORTS))
def test_every_report_reads_at_80_columns(name: str) -> None:
    lines = render(REPORTS[name], 80)
    assert max(len(line) for line in lines) <= 80
    cut = [line for line in lines if "…" in line]
    assert not cut, f"{name} cut a cell at 80 columns:\n" + "\n".join(cut)


def test_a_measured_tune_drops_columns_instead_of_cutting_them() -> None:
    """The issue's table: at 80 columns `ftplan tune --measure` drew "│││ │ com… │ 1,4… │"; now its details go and
    the measured and calibrated tokens/s stay, with every plan name whole across its lines."""
    from reports.tune_report import trials_table

    base = build_config(model="7b", gpus="8xA800", check=False)
    result = _measured_tune(plan(base, SearchSpace(), Limits()).plans)
    table = trials_table(result)
    console = Console(width=80)
    assert table.shown(console, 80) == ["#", "plan", "state", "tokens/s", "calibrated", "reason"]
    assert len(table.shown(console, 200)) == 13  # a wide terminal gets every column
    lines = render(table, 80)
    by_number = {str(r.number): r.name for r in result.rows}
    check_rows(plan_cells(lines, "plan", "state", "#"), [by_number[n] for n in table.table().columns[0].cells])
    text = " ".join(" ".join(lines).split())
    assert "Tried to allocate 2.00 GiB (GPU 0; 79.35 GiB total capacity)" in text  # wrapped, not cut
