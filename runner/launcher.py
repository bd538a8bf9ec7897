"""Start a plan's training: in this process for one device, under torchrun for several.

torchrun starts `python -m runner.train` once per device with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT set (torch/distributed/run.py); the transformers Trainer takes DDP, FSDP and DeepSpeed from there
(DeepSpeed reads the same variables in deepspeed.init_distributed, so its own launcher is not needed on one
node). Plans for `--gpus NxCPU` run N processes on the CPU over gloo: DS_ACCELERATOR=cpu makes DeepSpeed pick
its CPU accelerator (deepspeed/accelerator/real_accelerator.py), one OpenMP thread per process keeps N ranks
from oversubscribing the cores, and a free port avoids clashing with other runs on the machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from planner.strategy import Engine, TrainConfig
from profiler.launcher import free_port, is_cpu_plan, offline_env, rank_env, torchrun_command
from runner.train import RunOptions, to_argv


def launch_command(cfg: TrainConfig, plan: Path, opts: RunOptions, *,
                   master_port: int | None = None) -> list[str] | None:
    """The torchrun command line for a multi-process plan; None when one process runs it in place.
    Multi-node plans take NODE_RANK and MASTER_ADDR (and MASTER_PORT) from the environment on each node."""
    if cfg.world_size == 1:
        return None
    nodes = cfg.cluster.nodes
    port = master_port or int(os.environ.get("MASTER_PORT", 0)) or free_port()
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1") if nodes > 1 else "127.0.0.1"
    cmd = torchrun_command(nproc_per_node=cfg.cluster.gpus_per_node, nnodes=nodes, master_port=port,
                           node_rank=os.environ.get("NODE_RANK", "0"), master_addr=addr)
    return cmd + ["-m", "runner.train", *to_argv(plan, opts)]


def launch(cfg: TrainConfig, plan: Path, opts: RunOptions) -> int:
    """Run the plan to the end; returns the exit status (0 on success)."""
    cmd = launch_command(cfg, plan, opts)
    if cmd is None:
        if is_cpu_plan(cfg):
            # before deepspeed is imported anywhere in this process
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # before huggingface_hub is imported (it reads the switch once): the CLI that calls this imports none of it
        os.environ.update(offline_env())
        if cfg.engine is Engine.deepspeed:
            # a group of one, as a launcher would describe it; without these deepspeed.init_distributed
            # falls back to MPI discovery (deepspeed/comm/comm.py, init_distributed)
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                               ("MASTER_ADDR", "127.0.0.1")):
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        from runner.train import run

        run(cfg, opts)
        return 0
    return subprocess.call(cmd, env=rank_env(cfg))
