"""Real runs on this CPU machine: the emitted files drive two optimizer steps of a tiny Llama on 2 processes
over gloo: DeepSpeed ZeRO-2 and ZeRO-3 from ds_config.json, FSDP from accelerate.yaml (tests/runner/two_steps.py, the
three from one torchrun: each rank imports the libraries once and forks a process per run)."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from planner.gpus import parse_gpus
from planner.models import spec_from_hf_config
from planner.strategy import Engine, FsdpStrategy, FsdpVersion, Method, TrainConfig, ZeroStage
from planner.validity import validate
from runner.emit import emit

SCRIPT = Path(__file__).with_name("two_steps.py")
# a few hundred kB: 2 layers, GQA (4 heads, 2 KV heads), untied embeddings
TINY_LLAMA = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128, "tie_word_embeddings": False}


def tiny_plan(**kw) -> TrainConfig:
    model = spec_from_hf_config(TINY_LLAMA, name="tiny-llama")
    return validate(TrainConfig(model=model, cluster=parse_gpus("2xCPU"), method=Method.full, micro_batch=1,
                                grad_accum=2, seq_len=32, **kw))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RUNS = {"zero2": dict(engine=Engine.deepspeed, zero=ZeroStage.GRADIENTS),
        "zero3": dict(engine=Engine.deepspeed, zero=ZeroStage.WEIGHTS),
        # two_steps.run_fsdp drives torch's FSDP1 class from the emitted accelerate config: an FSDP1 plan
        "fsdp": dict(engine=Engine.fsdp, fsdp=FsdpStrategy.full_shard, fsdp_version=FsdpVersion.ONE)}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[TrainConfig, list[str]]]:
    """Every plan's emitted files drive its two steps; one torchrun runs them all, each in processes forked for it
    (two_steps.py). Returns each run's plan and rank 0's step lines."""
    root = tmp_path_factory.mktemp("real-runs")
    plans, cases = {}, {}
    for name, kw in RUNS.items():
        plans[name] = tiny_plan(**kw)
        emit(plans[name], root / name)
        mode = "fsdp" if plans[name].engine is Engine.fsdp else "deepspeed"
        cases[name] = f"{mode}:{free_port()}:{root / name}"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(SCRIPT), *cases.values()]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {}
    for name in RUNS:
        prefix = f"{root / name} "
        steps = [line.removeprefix(prefix) for line in proc.stdout.splitlines() if line.startswith(prefix)]
        assert len(steps) == 2 and all(line.startswith("step ") for line in steps), proc.stdout[-2000:]
        for line in steps:
            assert math.isfinite(float(re.search(r"loss (\S+)", line).group(1)))
        found[name] = (plans[name], steps)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stage", [ZeroStage.GRADIENTS, ZeroStage.WEIGHTS], ids=["zero2", "zero3"])
def test_deepspeed_two_steps(two_steps: dict, stage: ZeroStage):
    _, steps = two_steps[f"zero{int(stage)}"]
    assert steps[-1].endswith(f"global_steps 2 zero {int(stage)} world 2")


@pytest.mark.slow
def test_fsdp_two_steps(two_steps: dict):
    cfg, steps = two_steps["fsdp"]
    # one FSDP unit per decoder layer (the auto-wrap class from the model) plus the root
    assert f"fsdp_units {cfg.model.num_layers + 1} strategy FULL_SHARD" in steps[-1]
