"""A study written by `ftplan tune` opens in optuna-dashboard (the `dashboard` extra), with readable attributes:
the README's one command, `optuna-dashboard sqlite:///ftplan-tune.db`, run for real and asked for its API."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from cli_helpers import run

httpx = pytest.importorskip("httpx", reason="the dev extra (httpx) is not installed")
DASHBOARD = shutil.which("optuna-dashboard")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DASHBOARD is None, reason="optuna-dashboard absent: pip install -e '.[dashboard]'")]

TINY = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256}
PLAN_NAME = re.compile(r"^[A-Za-z0-9+_]+(-[A-Za-z0-9+_.]+)+$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tune_study_in_optuna_dashboard(tmp_path: Path, capsys, monkeypatch) -> None:
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    url = f"sqlite:///{tmp_path / 'ftplan-tune.db'}"
    code, _, err = run(capsys, monkeypatch, "tune", "--model", str(model), "--gpus", "2xA800", "--method", "lora",
                       "--seq-len", "128", "--trials", "6", "--sampler", "tpe", "--storage", url, "--json")
    assert code == 0, err

    # what the dashboard reads: study attributes that name the run, trial attributes that are plain values
    (summary,) = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    assert study.user_attrs["model"] == "tiny" and study.user_attrs["gpus"] == "2xA800"
    assert all(isinstance(v, str | int | float | bool) for v in study.user_attrs.values())
    assert study.metric_names == ["tokens_per_s", "peak_bytes"]  # not "Objective 0" and "Objective 1"
    complete = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert complete
    for t in complete:
        assert PLAN_NAME.match(t.user_attrs["name"]), t.user_attrs["name"]
        assert t.user_attrs["tokens_per_s"] == t.values[0] and t.user_attrs["peak_bytes"] == t.values[1]
        assert all(isinstance(v, str | int | float | bool) for v in t.user_attrs.values())

    port = free_port()
    proc = subprocess.Popen([DASHBOARD, url, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                studies = httpx.get(f"{base}/api/studies", timeout=10)
                if studies.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
            time.sleep(0.3)
        (listed,) = studies.json()["study_summaries"]
        assert listed["study_name"] == summary.study_name
        assert {a["key"]: a["value"] for a in listed["user_attrs"]}["model"] == "tiny"
        detail = httpx.get(f"{base}/api/studies/{listed['study_id']}", timeout=60).json()
        assert len(detail["trials"]) == len(study.trials)
        assert detail["objective_names"] == ["tokens_per_s", "peak_bytes"]
        keys = {a["key"]: a["sortable"] for a in detail["union_user_attrs"]}
        assert keys["tokens_per_s"] and keys["peak_bytes"] and not keys["name"]  # numbers sort, names read
        page = httpx.get(f"{base}/dashboard", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
