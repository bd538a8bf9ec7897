"""`ftplan scale`: table, PNG and JSON, numbers consistent with `ftplan plan`, one-line errors; and the
time fields of `ftplan estimate` / `ftplan plan` (job time, calibration)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_helpers import run

from ftplan import cli


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out_dir = tmp_path_factory.mktemp("scale")
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["ftplan", "scale", "--model", "llama-3.2-1b", "--gpu", "A800", "--max-gpus", "16",
                             "--method", "full", "--out", str(out_dir), "--json"])
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli.main()
    mp.undo()
    return json.loads(buf.getvalue()), out_dir


def test_scale_json_rows_and_files(scale_run: tuple[dict, Path]) -> None:
    data, out_dir = scale_run
    assert [r["gpus"] for r in data["rows"]] == [1, 2, 4, 8, 16]
    assert data["baseline_gpus"] == 1
    first = data["rows"][0]
    assert first["speedup"] == pytest.approx(1.0) and first["efficiency"] == pytest.approx(1.0)
    for row in data["rows"]:
        assert row["fits"]
        for key in ("plan", "tokens_per_s", "step_time_s", "mfu", "speedup", "efficiency", "time_breakdown_s"):
            assert key in row
        assert row["speedup"] == pytest.approx(row["tokens_per_s"] / first["tokens_per_s"])
    png = out_dir / "scale-llama-3.2-1b-A800-full.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out_dir / "scale-llama-3.2-1b-A800-full.json").read_text()) == data
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_scale_matches_plan_at_same_count(scale_run: tuple[dict, Path], capsys, monkeypatch) -> None:
    data, _ = scale_run
    row = next(r for r in data["rows"] if r["gpus"] == 8)
    code, out, _ = run(capsys, monkeypatch, "plan", "--model", "llama-3.2-1b", "--gpus", "8xA800", "--method", "full",
                       "--json")
    assert code == 0
    best = json.loads(out)["plans"][0]
    assert best["name"] == row["plan"]
    assert best["tokens_per_s"] == pytest.approx(row["tokens_per_s"], rel=1e-12)
    assert best["step_time_s"] == pytest.approx(row["step_time_s"], rel=1e-12)
    assert best["mfu"] == pytest.approx(row["mfu"], rel=1e-12)


def test_scale_table(capsys, monkeypatch, tmp_path: Path) -> None:
    code, out, _ = run(capsys, monkeypatch, "scale", "--model", "llama-3.2-1b", "--gpu", "A800", "--max-gpus", "2",
                       "--out", str(tmp_path))
    assert code == 0
    assert "speedup" in out and "efficiency" in out and "█" in out
    # a second run refuses to overwrite without --force, and writes nothing
    code, _, err = run(capsys, monkeypatch, "scale", "--model", "llama-3.2-1b", "--gpu", "A800", "--max-gpus", "2",
                       "--out", str(tmp_path))
    assert code == 2 and "--force" in err


@pytest.mark.parametrize("args, needle", [
    (("scale", "--model", "7b", "--gpu", "A800", "--max-gpus", "0"), "--max-gpus"),
    (("scale", "--model", "7b", "--gpu", "A900", "--max-gpus", "8"), "A900"),
    (("estimate", "--model", "7b", "--gpus", "8xA800", "--tokens", "0"), "--tokens"),
    (("estimate", "--model", "7b", "--gpus", "8xA800", "--samples", "-5"), "--samples"),
    (("plan", "--model", "7b", "--gpus", "8xA800", "--samples", "100", "--epochs", "0"), "--epochs"),
    (("plan", "--model", "7b", "--gpus", "8xA800", "--samples", "100", "--tokens", "100"), "not both"),
])
def test_bad_input_one_line_exit_2(capsys, monkeypatch, tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_estimate_json_time_and_job(capsys, monkeypatch) -> None:
    code, out, _ = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--method", "full",
                       "--zero", "3", "--micro-batch", "2", "--grad-accum", "4", "--samples", "6400", "--epochs", "2",
                       "--json")
    assert code == 0
    data = json.loads(out)
    for key in ("step_time_s", "tokens_per_s", "samples_per_s", "mfu", "time_breakdown_s"):
        assert key in data
    assert sum(data["time_breakdown_s"].values()) == pytest.approx(data["step_time_s"])
    assert data["tokens_per_s"] == pytest.approx(64 * 2048 / data["step_time_s"])
    assert data["job"]["steps"] == 200  # 6400 x 2 / 64
    assert data["job"]["gpu_hours"] == pytest.approx(200 * data["step_time_s"] * 8 / 3600)


def test_calibration_changes_speed(capsys, monkeypatch, tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"ftplan_calibration": 1, "factors": {"compute_efficiency": 0.4345}}))
    args = ("estimate", "--model", "7b", "--gpus", "8xA800", "--method", "lora", "--json")
    _, plain, _ = run(capsys, monkeypatch, *args)
    _, calibrated, _ = run(capsys, monkeypatch, *args, "--calibration", str(cal))
    a, b = json.loads(plain)["time_breakdown_s"], json.loads(calibrated)["time_breakdown_s"]
    # A800's GEMM efficiency 0.869 -> 0.4345 doubles the device time (a calibration scales every device term alike,
    # planner/timing.py)
    assert 1.8 * a["compute"] < b["compute"] <= 2 * a["compute"] * (1 + 1e-9)


def test_plan_table_shows_speed(capsys, monkeypatch) -> None:
    code, out, _ = run(capsys, monkeypatch, "plan", "--model", "llama-3.2-1b", "--gpus", "2xA800", "--method", "lora",
                       "--tokens", "1e8")
    assert code == 0
    assert "tokens/s" in out and "MFU" in out and "step time" in out and "GPU-hours" in out
