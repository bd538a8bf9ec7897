"""launch.sh runs: each launcher line is executed with stand-in launchers on PATH that print their arguments."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from planner.build import build_config
from planner.strategy import FsdpStrategy, Method, Offload
from runner.emit import emit

LAUNCHERS = ("ftplan", "torchrun", "deepspeed", "accelerate", "llamafactory-cli")


@pytest.fixture()
def fake_bin(tmp_path: Path) -> Path:
    """Executables named like the launchers; each prints `name arg arg ...` (one shell-quoted word each)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in LAUNCHERS:
        exe = bin_dir / name
        exe.write_text('#!/usr/bin/env bash\nprintf "%s" "$(basename "$0")"; printf " %q" "$@"; echo\n'
                       'echo "FORCE_TORCHRUN=${FORCE_TORCHRUN:-} NODE_RANK=$NODE_RANK NNODES=$NNODES"\n')
        exe.chmod(0o755)
    return bin_dir


def run(script: Path, fake_bin: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "MODEL_PATH": "/models/m",
                "DATA": "/data/train.jsonl", **env}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full_env)


def words(line: str) -> list[str]:
    return shlex.split(line)


def test_single_node_deepspeed(tmp_path: Path, fake_bin: Path):
    out = tmp_path / "plan dir"  # a space in the path must survive quoting
    emit(build_config(model="7b", gpus="8xA800", zero=3, offload=Offload.optimizer), out)
    script = out / "launch.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    plan = str(out.resolve() / "plan.json")
    default = words(run(script, fake_bin).stdout.splitlines()[0])
    assert default == ["ftplan", "run", plan, "--model-path", "/models/m", "--data", "/data/train.jsonl"]
    torchrun = words(run(script, fake_bin, "torchrun").stdout.splitlines()[0])
    assert torchrun[:11] == ["torchrun", "--nnodes", "1", "--node_rank", "0", "--master_addr", "127.0.0.1",
                             "--master_port", "29500", "--nproc_per_node", "8"]
    assert torchrun[11:] == ["-m", "runner.train", plan, "--model-path", "/models/m", "--data", "/data/train.jsonl"]
    ds = words(run(script, fake_bin, "deepspeed").stdout.splitlines()[0])
    assert ds[:3] == ["deepspeed", "--num_gpus", "8"] and ds[ds.index("--module") + 1] == "runner.train"
    acc = words(run(script, fake_bin, "accelerate").stdout.splitlines()[0])
    assert acc[:4] == ["accelerate", "launch", "--config_file", str(out.resolve() / "accelerate.yaml")]
    lf = run(script, fake_bin, "llamafactory").stdout.splitlines()
    assert words(lf[0]) == ["llamafactory-cli", "train", str(out.resolve() / "llamafactory.yaml")]
    assert lf[1].startswith("FORCE_TORCHRUN=1")


def test_missing_inputs_and_wrong_node_count(tmp_path: Path, fake_bin: Path):
    emit(build_config(model="7b", gpus="8xA800", zero=2), tmp_path)
    script = tmp_path / "launch.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert proc.returncode != 0 and "MODEL_PATH" in proc.stderr
    proc = run(script, fake_bin, "torchrun", NNODES="2")
    assert proc.returncode == 2 and "this plan is for 1 node(s)" in proc.stderr
    proc = run(script, fake_bin, "mpirun")
    assert proc.returncode == 2 and "unknown launcher" in proc.stderr


def test_multi_node_deepspeed_hostfile_and_rank_variables(tmp_path: Path, fake_bin: Path):
    emit(build_config(model="70b", gpus="2x8xA800", zero=3), tmp_path)
    script = tmp_path / "launch.sh"
    proc = run(script, fake_bin, NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="6000")
    torchrun = words(proc.stdout.splitlines()[0])
    assert torchrun[:11] == ["torchrun", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
                             "--master_port", "6000", "--nproc_per_node", "8"]
    assert proc.stdout.splitlines()[1].endswith("NODE_RANK=1 NNODES=2")
    proc = run(script, fake_bin, "deepspeed")
    assert proc.returncode != 0 and "HOSTS" in proc.stderr
    proc = run(script, fake_bin, "deepspeed", HOSTS="gpu-a gpu-b", MASTER_ADDR="gpu-a")
    assert (tmp_path / "hostfile").read_text() == "gpu-a slots=8\ngpu-b slots=8\n"
    ds = words(proc.stdout.splitlines()[0])
    assert ds[:7] == ["deepspeed", "--hostfile", str(tmp_path.resolve() / "hostfile"), "--master_addr", "gpu-a",
                      "--master_port", "29500"]
    acc = words(run(script, fake_bin, "accelerate", NODE_RANK="1", MASTER_ADDR="gpu-a").stdout.splitlines()[0])
    for flag, value in (("--num_machines", "2"), ("--machine_rank", "1"), ("--main_process_ip", "gpu-a")):
        assert acc[acc.index(flag) + 1] == value


def test_fsdp_has_no_deepspeed_launcher(tmp_path: Path, fake_bin: Path):
    emit(build_config(model="7b", gpus="8xA800", method=Method.full, fsdp=FsdpStrategy.full_shard), tmp_path)
    script = tmp_path / "launch.sh"
    assert "deepspeed" not in script.read_text()
    proc = run(script, fake_bin, "deepspeed")
    assert proc.returncode == 2
    lf = words(run(script, fake_bin, "llamafactory").stdout.splitlines()[0])
    assert lf[:4] == ["accelerate", "launch", "--config_file", str(tmp_path.resolve() / "accelerate.yaml")]
