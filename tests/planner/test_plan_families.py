"""`plan` for a model read from transformers is as cheap as for a hand-written family: `plan --model qwen3-8b --gpus
8xH100` evaluates as many candidates as the Llama plan of the same size, without importing torch (the spec ships as
JSON: planner/model_specs/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _plan(model: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftplan", "plan", "--model", model, "--gpus",
                           "8xH100", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), proc.stderr


def test_qwen3_plan_evaluates_as_many_candidates_as_llama_without_torch() -> None:
    qwen, imports = _plan("qwen3-8b")
    llama, _ = _plan("llama-3-8b")
    assert qwen["candidates_evaluated"] == llama["candidates_evaluated"] > 1000
    assert qwen["plans"], "no plan fits"
    imported = {line.split("|")[-1].strip() for line in imports.splitlines() if line.startswith("import time:")}
    assert not {"torch", "transformers", "deepspeed", "peft"} & imported
