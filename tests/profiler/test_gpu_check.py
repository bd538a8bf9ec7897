"""The GPU session's check (profiler/gpu_check.py, benchmarks/gpu_check.py) without a GPU: the smoke run on this CPU
end to end, and every phase against a simulated board (nvidia-smi's report, a child python that answers as an H100's
would, a fit file of known constants, a worker's readings), with failures and a budget that runs out. No wall-clock
time is asserted: the budget runs on a simulated clock."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from planner.device_fit_file import load
from planner.errors import PlanError
from planner.gpus import GPUS, with_device_fit
from planner.kernels import wave_efficiency
from profiler.device_fit_cuda import (
    CudaDeviceFit,
    constants_from,
    gemm_shapes,
)
from profiler.gpu_check import (
    FIT_NEEDS_S,
    MAX_OUT_FILES,
    OUT_NAME,
    PHASES,
    BudgetStop,
    CheckOptions,
    Seams,
    locked_versions,
    out_files,
    plan_config,
    predicted,
    run_check,
    selected_plans,
)
from profiler.gpu_check_plans import GPU_PLANS, SMOKE_PLANS
from profiler.launch import RunResult
from profiler.nvidia_smi import excerpts, parse_memory_query, parse_query_q
from reports.gpu_check_table import markdown

ROOT = Path(__file__).resolve().parents[2]
H100 = GPUS["H100"]
GIB = 2**30

# `nvidia-smi -q` as driver 580 prints it for an H100 SXM (abridged: sections the check reads, and some it does not)
SMI_Q = textwrap.dedent("""\

    ==============NVSMI LOG==============

    Timestamp                                 : Mon Dec  7 06:00:00 2026
    Driver Version                            : 580.159.04
    CUDA Version                              : 13.0

    Attached GPUs                             : 1
    GPU 00000000:00:05.0
        Product Name                          : NVIDIA H100 80GB HBM3
        Product Architecture                  : Hopper
        Persistence Mode                      : Enabled
        MIG Mode
            Current                           : Disabled
            Pending                           : Disabled
        Serial Number                         : 1650000000000
        FB Memory Usage
            Total                             : 81559 MiB
            Reserved                          : 551 MiB
            Used                              : 1 MiB
            Free                              : 81007 MiB
        Compute Mode                          : Default
        Performance State                     : P0
        Clocks Event Reasons
            Idle                              : Active
            SW Power Cap                      : Not Active
        Temperature
            GPU Current Temp                  : 31 C
        GPU Power Readings
            Instantaneous Power Draw          : 71.37 W
            Current Power Limit               : 700.00 W
            Default Power Limit               : 700.00 W
            Max Power Limit                   : 700.00 W
        Clocks
            Graphics                          : 345 MHz
            SM                                : 345 MHz
            Memory                            : 2619 MHz
        Max Clocks
            Graphics                          : 1980 MHz
            SM                                : 1980 MHz
            Memory                            : 2619 MHz
        Processes                             : None
    """)
SMI_MEMORY = "NVIDIA H100 80GB HBM3, 81559, 1\n"


# ------------------------------------------------------------------------------------------- nvidia-smi's report

def test_nvidia_smis_report_is_read_by_section_and_excerpted() -> None:
    fields = parse_query_q(SMI_Q)
    assert fields["Driver Version"] == "580.159.04"
    assert fields["Product Name"] == "NVIDIA H100 80GB HBM3"  # the GPU's bus-id header is left out of the path
    assert fields["FB Memory Usage/Total"] == "81559 MiB" and fields["MIG Mode/Current"] == "Disabled"
    assert fields["Max Clocks/SM"] == "1980 MHz" and fields["GPU Power Readings/Current Power Limit"] == "700.00 W"
    kept = excerpts(fields)
    assert "Serial Number" not in kept and "Timestamp" not in kept and kept["Clocks/SM"] == "345 MHz"
    assert parse_memory_query(SMI_MEMORY) == {"name": "NVIDIA H100 80GB HBM3", "total_bytes": 81559 * 2**20,
                                              "used_bytes": 2**20}
    with pytest.raises(PlanError, match="not 'name, total, used'"):
        parse_memory_query("No devices were found\n")


# --------------------------------------------------------------------------------------------- a simulated board

SUSTAINED_EFF, K0, COPY_BYTES_PER_S = 0.74, 120.0, 3.0e12


def _simulated_fit() -> dict[str, Any]:
    """A CUDA fit of known constants, as fit_cuda_device(real_steps=False).to_dict() returns it: GEMM points at
    E = 0.74 and k0 = 120 (the bursts 13% faster), attention at 0.45 of the peak."""
    peak = H100.peak_bf16_flops_per_s

    def gemm_s(m: int, k: int, eff: float) -> float:
        return 2.0 * m * k * k / (peak * wave_efficiency(m, k, H100.sm_count)) * (1 + K0 / k) / eff

    sustained = tuple((m, k, k, gemm_s(m, k, SUSTAINED_EFF)) for m, k in gemm_shapes())
    bursts = tuple((m, k, k, gemm_s(m, k, SUSTAINED_EFF * 1.13)) for m, k in gemm_shapes())
    # attention points: 8 x 32 heads x 1024 tokens; the fit's FLOP count over time x peak x waves = 0.45
    c = constants_from(H100, gemm=sustained, attention=(), copy_bytes_per_s=COPY_BYTES_PER_S, host_op_s=6e-6,
                       collectives={}, n=1, elementwise_s=0.01, gemm_bursts=bursts)
    windows = tuple({"m": m, "k": k, "n": k, "drop": 0.002, "spread": 0.03, "steady": True} for m, k in gemm_shapes())
    fit = CudaDeviceFit(device="cuda", gpu="H100", device_name="NVIDIA H100 80GB HBM3", gpus=1,
                        host_op_s=c["host_op_s"], gemm_efficiency=c["gemm_efficiency"],
                        gemm_half_rate_inner=c["gemm_half_rate_inner"], hbm_bytes_per_s=c["hbm_bytes_per_s"],
                        elementwise_bandwidth_fraction=c["elementwise_bandwidth_fraction"],
                        attention_efficiency=0.45, collective_alpha_s=c["collective_alpha_s"],
                        intra_node_bytes_per_s=c["intra_node_bytes_per_s"], gemm_points=sustained,
                        gemm_burst_efficiency=c["gemm_burst_efficiency"],
                        gemm_burst_half_rate_inner=c["gemm_burst_half_rate_inner"], gemm_burst_points=bursts,
                        gemm_windows=windows, gemm_settle={"seconds": 4.5, "reason": "clock", "chunks": 18})
    return fit.to_dict()


def _torch_env() -> dict[str, Any]:
    return {"python": "3.12.3", "torch_cuda": "13.0", "cuda_available": True, "device_count": 1,
            "device_name": "NVIDIA H100 80GB HBM3",
            "device_properties": {"name": "NVIDIA H100 80GB HBM3", "total_memory": 85520809984,
                                  "multi_processor_count": 132, "major": 9, "minor": 0},
            "libraries": {"torch": {"version": "2.11.0", "origin": "/opt/torch/.venv/torch/__init__.py"},
                          "transformers": {"version": "5.25.0", "origin": "/tmp/site/transformers/__init__.py"},
                          "peft": {"version": "0.21.2", "origin": "/tmp/site/peft/__init__.py"}}}


class Board:
    """The outside world of a GPU machine: nvidia-smi, the children (env, fit), the worker's runs, and a clock that
    each of them moves by the time it would take (seconds of the simulated clock, not this machine's)."""

    def __init__(self, *, env_s: float = 10.0, fit_s: float = 85.0, plan_s: float = 40.0,
                 fail: tuple[str, ...] = ()) -> None:
        self.now, self.env_s, self.fit_s, self.plan_s, self.fail = 0.0, env_s, fit_s, plan_s, fail
        self.launched: list[str] = []

    def clock(self) -> float:
        return self.now

    def nvidia_smi(self, args: list[str]) -> str:
        if "nvidia-smi" in self.fail:
            raise PlanError("nvidia-smi is not on the PATH (no NVIDIA driver here)")
        return SMI_Q if args == ["-q"] else SMI_MEMORY

    def child(self, args: list[str], timeout_s: float) -> str:
        took = self.env_s if args[0] == "env" else self.fit_s
        if took > timeout_s:
            self.now += timeout_s
            raise BudgetStop(f"stopped after {timeout_s:.0f} s (the budget)")
        self.now += took
        if args[0] in self.fail:
            raise PlanError(f"{args[0]} child failed (exit 1): RuntimeError: CUDA error: unspecified launch failure")
        if args[0] == "env":
            return "some library's chatter\n" + json.dumps(_torch_env()) + "\n"
        from planner.device_fit_file import write_fit

        _, path = write_fit(_simulated_fit(), Path(args[args.index("--out-dir") + 1]) / "H100.json")
        return json.dumps({"path": str(path), "fit_s": self.fit_s}) + "\n"

    def launch(self, cfg: Any, *, warmup_steps: int, steps: int, timeout_s: float) -> RunResult:
        self.launched.append(cfg.model.name)
        if self.plan_s > timeout_s:
            self.now += timeout_s
            raise PlanError(f"torchrun (1 process(es), 1GPU) did not finish in {timeout_s:.0f} s")
        self.now += self.plan_s
        if cfg.model.name in self.fail:
            raise PlanError("torchrun failed (exit 1, 1GPU on 1 process(es)): torch.OutOfMemoryError: CUDA out of "
                            "memory")
        p = predicted(cfg, None)
        rank = {"rank": 0, "peak_allocated_bytes": round(p["allocated_bytes"] * 1.05),
                "peak_reserved_bytes": round(p["reserved_bytes"] * 1.10), "device_used_bytes": round(p["device_bytes"]
                                                                                                    * 1.08),
                "non_torch_bytes": 600 * 2**20, "step_time_s": p["step_time_s"] * 1.25,
                "step_times_s": [p["step_time_s"] * 1.25] * steps, "tokens_per_s": 1.0, "mfu": 0.3,
                "versions": {"torch": "2.11.0", "transformers": "5.25.0", "device": "NVIDIA H100 80GB HBM3"}}
        return RunResult(config=cfg, ranks=(rank,))

    def seams(self) -> Seams:
        return Seams(child=self.child, launch=self.launch, nvidia_smi=self.nvidia_smi, clock=self.clock,
                     markdown=markdown)


def _check(tmp_path: Path, board: Board, **kw: Any) -> dict[str, Any]:
    summary = run_check(CheckOptions(out_dir=tmp_path / "out", **kw), board.seams())
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["phases"].keys() == summary["phases"].keys() == set(PHASES)
    return summary


def test_every_phase_on_a_simulated_h100(tmp_path: Path) -> None:
    board = Board()
    summary = _check(tmp_path, board)
    phases = summary["phases"]
    assert [phases[p]["status"] for p in PHASES] == ["ok"] * 4
    env = phases["environment"]
    assert env["gpu"] == "H100" and env["nvidia_smi"]["Max Clocks/SM"] == "1980 MHz"
    assert env["memory_before"]["used_bytes"] == 2**20
    assert env["versions"]["transformers"] == {"running": "5.25.0", "locked": locked_versions(
        ROOT / "requirements-lock.txt")["transformers"]}
    # the fit: its file is the one `profile calibrate --device` writes, and its constants sit beside the catalog's
    fit = phases["device_fit"]
    rows = {r["name"]: r for r in fit["comparison"]}
    assert rows["gemm_efficiency"]["measured"] == pytest.approx(SUSTAINED_EFF, rel=1e-3)
    assert rows["gemm_efficiency"]["catalog"] == pytest.approx(0.753)  # planner/compute.py's Hopper MSMF share
    assert rows["gemm_burst_efficiency"]["measured"] == pytest.approx(SUSTAINED_EFF * 1.13, rel=1e-3)
    assert rows["gemm_half_rate_inner"]["measured"] == pytest.approx(K0, rel=1e-3)
    assert rows["hbm_bytes_per_s"]["ratio"] == pytest.approx(COPY_BYTES_PER_S / H100.hbm_bytes_per_s)
    assert rows["attention_efficiency"]["catalog"] == H100.attention_efficiency
    assert fit["windows_steady"] == fit["windows"] == 16 and fit["settle"]["reason"] == "clock"
    loaded = load(tmp_path / "out" / fit["file"])
    assert loaded.device == "H100"
    assert with_device_fit(H100, loaded.constants()).gemm_efficiency == pytest.approx(SUSTAINED_EFF, rel=1e-3)
    # the steps: every plan, cheapest first, each with the three readings and the step time beside ftplan's
    plans = phases["steps"]["plans"]
    assert [r["label"] for r in plans] == [p.label for p in GPU_PLANS] and board.launched[0] == "llama-3.2-1b"
    for row in plans:
        assert row["status"] == "ok" and row["plan"].startswith("1GPU")
        e = row["errors"]
        assert e["allocated"] == pytest.approx(1 / 1.05 - 1, abs=1e-6)
        assert e["reserved"] == pytest.approx(1 / 1.10 - 1, abs=1e-6)
        assert e["device"] == pytest.approx(1 / 1.08 - 1, abs=1e-6)
        assert e["step_time"] == pytest.approx(1 / 1.25 - 1)
        # the fit's slower GEMMs (k0 = 120, a 3.0 TB/s copy) predict a slower step than the catalog's
        assert row["predicted"]["step_time_fitted_s"] > row["predicted"]["step_time_s"]
        assert row["device_used_before_bytes"] == 2**20
    table = (tmp_path / "out" / "table.md").read_text()
    assert phases["table"]["markdown"] == table
    assert "| gemm_efficiency | 0.740 | 0.753 |" in table and "llama2-7b-lora-ckpt-mb4" in table
    assert "did not complete" not in table
    assert summary["out_files"]["problems"] == [] and set(summary["out_files"]["files"]) == {
        "summary.json", "table.md", "nvidia-smi.txt", "H100.json"}


def test_a_failing_phase_is_recorded_and_the_rest_run(tmp_path: Path) -> None:
    board = Board(fail=("fit", "gemma-3-4b", "nvidia-smi"))
    summary = _check(tmp_path, board)
    phases = summary["phases"]
    assert phases["environment"]["status"] == "ok"  # nvidia-smi's absence is recorded inside it; torch named the GPU
    assert "not on the PATH" in phases["environment"]["errors"]["nvidia_smi"]
    assert phases["environment"]["gpu"] == "H100"
    assert phases["device_fit"]["status"] == "failed"
    assert "unspecified launch failure" in phases["device_fit"]["error"] and "Traceback" in phases["device_fit"][
        "traceback"]
    statuses = {r["model"]: r["status"] for r in phases["steps"]["plans"]}
    assert statuses == {"llama-3.2-1b": "ok", "qwen3-4b": "ok", "gemma-3-4b": "failed", "llama-2-7b": "ok"}
    gemma = next(r for r in phases["steps"]["plans"] if r["model"] == "gemma-3-4b")
    assert "out of memory" in gemma["error"] and gemma["predicted"]["device_bytes"] > 0  # the prediction stays
    ok = phases["steps"]["plans"][0]
    assert ok["predicted"]["step_time_fitted_s"] is None and ok["errors"]["step_time_fitted"] is None
    assert phases["table"]["status"] == "ok"
    table = phases["table"]["markdown"]
    assert "- device_fit: **failed**" in table and "gemma3-4b-lora-mb1" in table and "failed: PlanError" in table


def test_the_budget_skips_what_it_cannot_hold_and_the_table_still_comes(tmp_path: Path) -> None:
    # 10 s environment, 85 s fit, 40 s a plan: after three plans 215 s are gone; 35 s are left, under the 7B's needs
    board = Board()
    summary = _check(tmp_path, board, budget_s=250.0)
    plans = summary["phases"]["steps"]["plans"]
    assert [r["status"] for r in plans] == ["ok", "ok", "ok", "skipped", "skipped"]
    assert plans[3]["reason"] == "budget: 35 s left, the plan needs 75 s" and "measured" not in plans[3]
    assert summary["phases"]["table"]["status"] == "ok" and summary["elapsed_s"] <= 250.0
    # too little for the fit: skipped; the cheapest plan still runs, predicted with the catalog's constants alone
    summary = _check(tmp_path, Board(), budget_s=FIT_NEEDS_S)
    assert summary["phases"]["device_fit"]["status"] == "skipped"
    assert summary["phases"]["device_fit"]["reason"].startswith("budget: 90 s left")
    plans = summary["phases"]["steps"]["plans"]
    assert [r["status"] for r in plans] == ["ok"] + ["skipped"] * 4
    assert plans[0]["predicted"]["step_time_fitted_s"] is None
    assert summary["phases"]["table"]["status"] == "ok"


def test_a_child_or_a_plan_past_the_budget_is_stopped(tmp_path: Path) -> None:
    # the fit runs longer than the budget holds: the child is stopped, not failed, and the steps find no time
    summary = _check(tmp_path, Board(fit_s=500.0), budget_s=200.0)
    fit = summary["phases"]["device_fit"]
    assert fit["status"] == "stopped" and "the budget" in fit["error"]
    assert summary["phases"]["steps"]["status"] == "ok"
    assert {r["status"] for r in summary["phases"]["steps"]["plans"]} == {"skipped"}
    # a plan that outlives the budget: its torchrun is given what is left, less the table's reserve
    summary = _check(tmp_path, Board(plan_s=200.0), budget_s=260.0, plans=("llama32-1b-full-mb2",))
    row = summary["phases"]["steps"]["plans"][0]
    assert row["status"] == "stopped" and "did not finish in 160 s" in row["error"]
    assert summary["phases"]["table"]["status"] == "ok"


def test_bad_options_write_nothing(tmp_path: Path) -> None:
    for kw, match in (({"budget_s": 0.0}, "--budget-s"), ({"budget_s": math.nan}, "--budget-s"),
                      ({"plans": ("llama2-70b",)}, "unknown plan 'llama2-70b'"), ({"steps": 0}, "--steps"),
                      ({"gpu": "H1000"}, "H1000")):
        with pytest.raises(PlanError, match=match):
            run_check(CheckOptions(out_dir=tmp_path / "out", **kw), Board().seams())
    assert not (tmp_path / "out").exists()


def test_output_names_follow_the_device_tools_rules(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    for name in ("summary.json", "a/b/ok.txt", "a/b/c/deep.txt", "bad name.txt"):
        (tmp_path / name).write_text("x")
    found = out_files(tmp_path)
    assert found["problems"] == ["bad name.txt: a name outside letters, digits, '.', '_', '-'",
                                 "a/b/c/deep.txt: more than 2 folders down"]
    for i in range(MAX_OUT_FILES):
        (tmp_path / f"f{i}.json").write_text("x")
    assert out_files(tmp_path)["problems"][-1] == f"{MAX_OUT_FILES + 4} files: more than {MAX_OUT_FILES} come back"


# ------------------------------------------------------------------------------------------------ the plans

@pytest.mark.parametrize("gpu", ["H100", "H200"])
def test_every_plan_fits_one_card_and_runs_cheapest_first(gpu: str) -> None:
    assert [p.needs_s for p in GPU_PLANS] == sorted(p.needs_s for p in GPU_PLANS)
    assert len({p.label for p in GPU_PLANS + SMOKE_PLANS}) == len(GPU_PLANS) + len(SMOKE_PLANS)
    for plan in GPU_PLANS:
        assert OUT_NAME.match(plan.label)
        cfg = plan_config(plan, gpu, plan.model)
        p = predicted(cfg, None)
        assert p["fit_bytes"] < 0.6 * GPUS[gpu].hbm_bytes, plan.label  # room for the planner being 40% low
        assert p["allocated_bytes"] <= p["reserved_bytes"] <= p["device_bytes"]
    assert selected_plans(CheckOptions(out_dir=Path("."), plans=("llama2-7b-lora-mb1", "llama32-1b-full-mb2"))) == (
        GPU_PLANS[0], GPU_PLANS[3])


# ------------------------------------------------------------------------------------------ the smoke run, for real

def test_the_smoke_run_on_this_cpu_writes_every_phase(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py --smoke: the environment child, the fit child (which fails without CUDA: recorded),
    one tiny plan through the worker of `profile run`, the table; exit 0, files the device tool takes."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--smoke", "--plans",
                           "tiny-gemma3-lora-ckpt", "--steps", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    phases = summary["phases"]
    assert [phases[p]["status"] for p in PHASES] == ["ok", "failed", "ok", "ok"]
    assert phases["environment"]["gpu"] == "CPU" and phases["environment"]["torch"]["cuda_available"] is False
    assert phases["environment"]["versions"]["transformers"]["running"]
    assert "fit child failed" in phases["device_fit"]["error"]
    (row,) = phases["steps"]["plans"]
    assert row["status"] == "ok" and row["measured"]["allocated_bytes"] > 0
    assert len(row["measured"]["step_times_s"]) == 1
    assert row["measured"]["device_bytes"] is None  # no device reading on the CPU
    assert row["errors"]["allocated"] is not None and row["errors"]["step_time"] is not None
    assert "### Real steps on 1xCPU" in proc.stdout and "tiny-gemma3-lora-ckpt" in (out / "table.md").read_text()
    assert summary["out_files"]["problems"] == [] and len(summary["out_files"]["files"]) <= MAX_OUT_FILES


@pytest.mark.parametrize(("args", "message"), [(("--plans", "x"), "unknown plan 'x'"),
                                               (("--budget-s", "soon"), "invalid float value: 'soon'"),
                                               (("--budget-s", "-1"), "--budget-s must be a positive number")])
def test_the_scripts_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "o"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not (tmp_path / "o").exists()


def test_the_device_command_is_one_line_in_the_docstring_and_the_readme() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_script", ROOT / "benchmarks" / "gpu_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    command = script.DEVICE_COMMAND
    assert len(command) <= 2000 and "\n" not in command  # the device tool's limit for a command
    assert ".whl/*.whl" in command and "--out $OUT" in command and "--budget-s 420" in command
    assert command in script.__doc__.splitlines()
    assert command in (ROOT / "README.md").read_text().splitlines()
    assert script.DEVICE_TIMEOUT_S == 540 and f"timeout_s {script.DEVICE_TIMEOUT_S}" in script.__doc__
