"""`ftplan profile run --model cfg.json` with a relative path: the workers start in another directory, so every
model path they get is absolute (it failed inside torchrun with FileNotFoundError: 'cfg.json')."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from planner.build import build_config
from profiler import launch as launch_module

TINY = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256}


def test_relative_model_paths_reach_the_workers_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps(TINY))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(TINY))
    monkeypatch.chdir(tmp_path)
    cfg = build_config(model="cfg.json", gpus="1xCPU", seq_len=64)
    assert cfg.model.source == str(tmp_path / "cfg.json")
    seen: dict = {}

    def fake_run(cmd, **kwargs):
        spec = json.loads(Path(cmd[cmd.index("--spec") + 1]).read_text())
        seen.update(spec=spec, cwd=kwargs.get("cwd"))
        return subprocess.CompletedProcess(cmd, 1, "", "stopped by the test")

    monkeypatch.setattr(launch_module, "run_stopping_ranks", fake_run)
    with pytest.raises(Exception, match="stopped by the test"):
        launch_module.launch(cfg, model_path=Path("model"))
    assert Path(seen["cwd"]).resolve() != tmp_path.resolve()  # why relative paths broke
    assert seen["spec"]["model_path"] == str(tmp_path / "model")
    assert seen["spec"]["config"]["model"]["source"] == str(tmp_path / "cfg.json")
