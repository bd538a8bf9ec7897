"""Calibration: the fit reduces the error it reports, the file round-trips through the planner's loader,
and a calibration made by `ftplan profile run` changes `ftplan estimate` and reduces its error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import run as _cli

from planner.build import build_config
from planner.calibration import DEFAULT, Calibration, load_calibration
from planner.memory import memory_per_gpu
from planner.strategy import GradCkpt, Method
from profiler.calibrate import Profile, calibrate, errors, fit, write_calibration


def _synthetic_profiles() -> list[Profile]:
    """Profiles measured as if activations took 30% more than the planner says."""
    true = Calibration(activation_multiplier=1.3)
    out = []
    for seq_len, ckpt in ((1024, GradCkpt.none), (2048, GradCkpt.none), (4096, GradCkpt.none), (2048, GradCkpt.full)):
        cfg = build_config(model="llama-2-7b", gpus="1xA100", method=Method.lora, seq_len=seq_len, grad_ckpt=ckpt)
        out.append(Profile(config=cfg, peak_bytes=memory_per_gpu(cfg, true).allocated))  # max_memory_allocated
    return out


def test_fit_recovers_a_known_activation_multiplier() -> None:
    profiles = _synthetic_profiles()
    cal = fit(profiles)
    assert cal.activation_multiplier == pytest.approx(1.3, rel=0.05)
    before, after = errors(profiles, DEFAULT), errors(profiles, cal)
    assert max(map(abs, after.memory)) < max(map(abs, before.memory))
    assert max(map(abs, after.memory)) < 0.01


def test_calibration_file_round_trips(tmp_path: Path) -> None:
    cal, data = calibrate(_synthetic_profiles(), {"torch": "2.13.0", "transformers": "5.23"})
    path = tmp_path / "cal.json"
    write_calibration(path, data)
    loaded = load_calibration(path)
    assert loaded.activation_multiplier == cal.activation_multiplier
    assert dict(loaded.key)["device"] == "A100-80G" and dict(loaded.key)["framework"] == "ddp"
    assert data["error_after"]["memory_worst_abs"] < data["error_before"]["memory_worst_abs"]
    assert [p.name for p in tmp_path.iterdir()] == ["cal.json"]  # no temporary left behind


@pytest.mark.slow
def test_profile_run_calibration_changes_estimate_and_reduces_error(capsys, monkeypatch, tiny_model: Path,
                                                                    tmp_path: Path) -> None:
    cal_file = tmp_path / "cal.json"
    common = ("-m", str(tiny_model), "--gpus", "1xCPU", "--method", "full", "--precision", "32-true",
              "--seq-len", "128")
    code, out, err = _cli(capsys, monkeypatch, "profile", "run", *common, "--steps", "2", "--calibrate",
                          str(cal_file), "--json")
    assert code == 0, err
    measured = json.loads(out)
    data = json.loads(cal_file.read_text())
    assert data["ftplan_calibration"] == 1 and data["key"]["device"] == "CPU"
    cal = load_calibration(cal_file)
    assert cal.compute_efficiency is not None

    code, plain, err = _cli(capsys, monkeypatch, "estimate", *common, "--json")
    assert code == 0, err
    code, calibrated, err = _cli(capsys, monkeypatch, "estimate", *common, "--calibration", str(cal_file), "--json")
    assert code == 0, err
    plain, calibrated = json.loads(plain), json.loads(calibrated)
    assert plain != calibrated

    def time_of(est: dict) -> float:
        return est["step_time_s"]

    step = measured["step_time_s"]
    assert abs(time_of(calibrated) / step - 1) < abs(time_of(plain) / step - 1)
    mem = measured["measured_peak_bytes"]
    before = abs(plain["memory_per_gpu_bytes"]["total"] / mem - 1)
    after = abs(calibrated["memory_per_gpu_bytes"]["total"] / mem - 1)
    assert after <= before + 1e-9


@pytest.mark.slow
def test_failed_torchrun_is_one_line_and_writes_no_calibration(capsys, monkeypatch, tmp_path: Path) -> None:
    # the planner knows chatglm3-6b's shapes, but transformers cannot build it without remote code:
    # the ranks fail, and the error names their exception
    cal_file = tmp_path / "cal.json"
    code, _, err = _cli(capsys, monkeypatch, "profile", "run", "-m", "chatglm3-6b", "--gpus", "1xCPU",
                        "--seq-len", "16", "--calibrate", str(cal_file))
    assert code == 2
    assert err.startswith("ftplan: error: torchrun failed") and "chatglm" in err and err.count("\n") == 1
    assert not cal_file.exists()
    assert list(tmp_path.iterdir()) == []


def test_calibration_with_replace_keeps_other_factors() -> None:
    cal = replace(DEFAULT, compute_efficiency=0.5)
    assert cal.activation_multiplier == 1.0 and cal.compute_efficiency == 0.5
