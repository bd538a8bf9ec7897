"""The drill's gate (runner.trial, FTPLAN_TRIAL_DRILL_GATE): a drilled rank holds until the gate file exists, then
reports the time model's figures as any drill does, so a test can order workers by what it sees in the storage
(tests/runner/test_tune_distributed.py). One rank's `main` in this process: no torch, no launcher."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from planner.build import build_config
from planner.serialize import config_to_dict
from runner import trial
from runner.trial import DRILL_ENV, DRILL_GATE_ENV

TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 1024, "hidden_size": 128,
        "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-llama" / "config.json"
    model.parent.mkdir()
    model.write_text(json.dumps(TINY))
    cfg = build_config(model=str(model), gpus="2xCPU", method="full", seq_len=128, micro_batch=2)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"config": config_to_dict(cfg), "warmup_steps": 1, "steps": 1, "model_path": None}))
    return path


def _rank(spec: Path, out: Path) -> threading.Thread:
    thread = threading.Thread(target=trial.main, args=(["--spec", str(spec), "--out", str(out)],), daemon=True)
    thread.start()
    return thread


def test_a_drilled_rank_waits_for_its_gate(spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, out = tmp_path / "gate", tmp_path / "out"
    monkeypatch.setenv(DRILL_ENV, "0")
    monkeypatch.setenv(DRILL_GATE_ENV, str(gate))
    monkeypatch.setenv("RANK", "0")
    rank = _rank(spec, out)
    rank.join(timeout=1.0)
    assert rank.is_alive() and not (out / "rank0.json").exists()  # held: no result while the gate is shut
    gate.touch()
    rank.join(timeout=60)
    assert not rank.is_alive()
    result = json.loads((out / "rank0.json").read_text())
    assert result["drill"] and result["step_time_s"] > 0 and result["peak_allocated_bytes"] > 0


def test_without_a_gate_a_drill_does_not_wait(spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv(DRILL_ENV, "0")
    monkeypatch.delenv(DRILL_GATE_ENV, raising=False)
    monkeypatch.setenv("RANK", "0")
    rank = _rank(spec, out)
    rank.join(timeout=60)
    assert not rank.is_alive() and json.loads((out / "rank0.json").read_text())["drill"]
