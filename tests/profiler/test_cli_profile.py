"""`ftplan profile dry-run | run | calibrate`: output contracts and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run


def test_dry_run_json_contract(capsys, monkeypatch, tiny_model: Path, tmp_path: Path) -> None:
    save = tmp_path / "dry.json"
    code, out, err = run(capsys, monkeypatch, "profile", "dry-run", "-m", str(tiny_model), "--method", "full",
                         "--seq-len", "128", "--json", "--save", str(save))
    assert code == 0, err
    data = json.loads(out)
    measured = data["measured_peak_bytes"]
    assert set(measured) == {"total", "weights", "gradients", "optimizer", "activations", "other"}
    assert measured["total"] == sum(v for k, v in measured.items() if k != "total")
    assert isinstance(data["predicted_peak_bytes"], int)
    assert data["predicted_peak_bytes"] == pytest.approx(measured["total"], rel=0.10)
    saved = json.loads(save.read_text())
    assert saved["ftplan_profile"] == 1 and saved["kind"] == "dry-run"


def test_dry_run_table(capsys, monkeypatch, tiny_model: Path) -> None:
    code, out, err = run(capsys, monkeypatch, "profile", "dry-run", "-m", str(tiny_model), "--seq-len", "64")
    assert code == 0, err
    for word in ("weights", "gradients", "optimizer", "activations", "other", "total", "planner"):
        assert word in out


@pytest.mark.parametrize("args", [
    ("profile", "dry-run", "-m", "no-such-model"),
    ("profile", "dry-run", "-m", "chatglm3-6b"),
    ("profile", "dry-run", "-m", "llama-2-7b", "--gpus", "2xA100"),
    ("profile", "dry-run", "-m", "llama-2-7b", "--gpus", "1xNoSuchGPU"),
    ("profile", "run", "--gpus", "2xH100"),
    ("profile", "run", "--gpus", "2xCPU", "--tp", "2"),
    ("profile", "run", "--model-path", "/nonexistent/dir"),
    ("profile", "calibrate", "/nonexistent/profile.json", "--out", "cal.json"),
], ids=["unknown-model", "unbuildable-model", "two-gpus", "unknown-gpu", "no-cuda", "bad-option", "no-model-dir",
        "no-profile"])
def test_bad_input_exits_2_with_one_line(capsys, monkeypatch, tmp_path: Path, args: tuple[str, ...]) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, monkeypatch, *args)
    assert code == 2
    assert err.startswith("ftplan: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "cal.json").exists()
