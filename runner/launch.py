"""launch.sh for a plan: one script that starts `ftplan run` (which picks the launcher itself on one node),
or the same training under torchrun, the deepspeed launcher or `accelerate launch`, single or multi-node,
plus the equivalent lines for the user's own training script.

Rendezvous variables follow torchrun's names (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT: torch/distributed/run.py);
the deepspeed launcher reads a hostfile of `hostname slots=N` lines and starts every node over pdsh/ssh from
node 0 (deepspeed/launcher/runner.py, `fetch_hostfile`); LLaMA-Factory's `llamafactory-cli train` reads the
same variables with FORCE_TORCHRUN=1 (LLaMA-Factory README, "Distributed training").
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from planner.gpus import is_cpu
from planner.input_checks import one_line
from planner.strategy import Engine, TrainConfig
from runner import switches

PLAN_FILE = "plan.json"
DS_CONFIG_FILE = "ds_config.json"
DS_TRAINER_CONFIG_FILE = "ds_config.trainer.json"
ACCELERATE_FILE = "accelerate.yaml"
LLAMAFACTORY_FILE = "llamafactory.yaml"
LAUNCH_FILE = "launch.sh"
DEFAULT_MASTER_PORT = 29500  # torchrun's default --master_port


@dataclass(frozen=True, kw_only=True, slots=True)
class Launch:
    """How to start a plan: the one command, and each launcher's line (as bash text)."""

    start: str  # the one command to start training
    torchrun: str
    deepspeed: str | None  # only for DeepSpeed plans
    accelerate: str
    own_script: tuple[str, ...]  # equivalents for a user's own train.py
    llamafactory: str


def _q(path: str) -> str:
    return shlex.quote(path)


def _comment(line: str) -> str:
    """A comment line of the script: text from the plan (the model's name) cannot end it and start a command."""
    return one_line(line)


def trainer_cli_flags(cfg: TrainConfig) -> str:
    """A Trainer script's flags for the plan (HfArgumentParser): activation checkpointing as `ftplan run` sets it, with
    --activation-offload as the Trainer's `offload` (runner.run_common.emitted_checkpointing_fields; the script says
    how `ftplan run` differs, switches.activation_offload_note), then the memory switches (switches.trainer_cli_flags).
    The kwargs go as JSON, which TrainingArguments.__post_init__ parses (_VALID_DICT_FIELDS)."""
    from runner.run_common import emitted_checkpointing_fields

    ckpt = emitted_checkpointing_fields(cfg)
    out = ""
    if ckpt["activation_checkpointing"]:
        out = (" --activation_checkpointing True --activation_checkpointing_kwargs "
               f"{shlex.quote(json.dumps(ckpt['activation_checkpointing_kwargs']))}")
    return out + switches.trainer_cli_flags(cfg)


def launch_lines(cfg: TrainConfig, out_dir: str = ".") -> Launch:
    """Lines as they appear in launch.sh (with $VARS); `out_dir` prefixes file names in `start`."""
    per_node, nodes = cfg.cluster.gpus_per_node, cfg.cluster.nodes
    train = '-m runner.train "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA"'
    rdzv = '--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"'
    torchrun = f'torchrun {rdzv} --nproc_per_node {per_node} {train}'
    deepspeed = None
    if cfg.engine is Engine.deepspeed:
        # --no_local_rank: the script reads LOCAL_RANK from the environment instead of a --local_rank argument
        if nodes > 1:
            deepspeed = ('deepspeed --hostfile "$HERE/hostfile" --master_addr "$MASTER_ADDR" '
                         f'--master_port "$MASTER_PORT" --no_local_rank --module {train[3:]}')
        else:
            deepspeed = (f'deepspeed --num_gpus {per_node} --master_port "$MASTER_PORT" --no_local_rank '
                         f'--module {train[3:]}')
    accelerate = ('accelerate launch --config_file "$HERE/accelerate.yaml" --num_machines "$NNODES" '
                  '--machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" '
                  f'{train}')
    own: list[str] = []
    if cfg.engine is Engine.deepspeed:
        own.append(f'torchrun {rdzv} --nproc_per_node {per_node} train.py --deepspeed "$HERE/ds_config.trainer.json"'
                   f'{trainer_cli_flags(cfg)}  # transformers Trainer script')
        if nodes > 1:
            own.append('deepspeed --hostfile "$HERE/hostfile" train.py --deepspeed_config "$HERE/ds_config.json"'
                       '  # deepspeed.initialize script')
        else:
            own.append(f'deepspeed --num_gpus {per_node} train.py --deepspeed_config "$HERE/ds_config.json"'
                       '  # deepspeed.initialize script')
    else:
        own.append(f'torchrun {rdzv} --nproc_per_node {per_node} train.py{trainer_cli_flags(cfg)}'
                   '  # your DDP/FSDP script')
    own.append('accelerate launch --config_file "$HERE/accelerate.yaml" --machine_rank "$NODE_RANK" '
               '--main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" train.py  # accelerate script')
    if cfg.engine is Engine.fsdp:
        # LLaMA-Factory runs FSDP through accelerate (its examples/accelerate/fsdp_config.yaml)
        llamafactory = ('accelerate launch --config_file "$HERE/accelerate.yaml" --machine_rank "$NODE_RANK" '
                        '--main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" '
                        'src/train.py "$HERE/llamafactory.yaml"')
    else:
        llamafactory = 'env FORCE_TORCHRUN=1 llamafactory-cli train "$HERE/llamafactory.yaml"'
    prefix = out_dir.rstrip("/") + "/" if out_dir not in ("", ".") else ""
    start = f"ftplan run {_q(prefix + PLAN_FILE)} --model-path MODEL_DIR --data DATA_FILE"
    if nodes > 1:
        start = f"NODE_RANK=0 MASTER_ADDR=<node-0 address> bash {_q(prefix + LAUNCH_FILE)} torchrun  (on each node)"
    return Launch(start=start, torchrun=torchrun, deepspeed=deepspeed, accelerate=accelerate,
                  own_script=tuple(own), llamafactory=llamafactory)


def launch_script(cfg: TrainConfig) -> str:
    lines = launch_lines(cfg)
    per_node, nodes = cfg.cluster.gpus_per_node, cfg.cluster.nodes
    multi = nodes > 1
    out = [
        "#!/usr/bin/env bash",
        _comment(f"# Written by ftplan for {cfg} ({cfg.method.value} {cfg.model.name} on {cfg.cluster}: "
                 f"{nodes} node(s) x {per_node} processes)."),
        "#",
        "# Usage:  MODEL_PATH=/path/to/model DATA=/path/to/train.jsonl bash launch.sh [LAUNCHER [RUN OPTIONS]]",
        "#   LAUNCHER: " + ("torchrun (default), " if multi else
                          "ftplan (default: `ftplan run` starts the launcher itself), torchrun, ")
        + ("deepspeed, " if lines.deepspeed else "") + "accelerate, llamafactory",
        "#   RUN OPTIONS go to the training (not llamafactory), e.g. --output run/ --max-steps 500",
    ]
    if multi:
        out += [f"# Multi-node: run on each of the {nodes} nodes with NODE_RANK=0..{nodes - 1} and MASTER_ADDR set to",
                "# node 0's address (torchrun, accelerate, llamafactory)."]
        if lines.deepspeed:
            out += ["# The deepspeed launcher instead runs on node 0 only and starts the others over ssh (pdsh):",
                    "# set HOSTS to the node names, node 0 first."]
    out += [
        "set -euo pipefail",
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        ': "${MODEL_PATH:?set MODEL_PATH to the model directory}"',
        ': "${DATA:?set DATA to the training data file}"',
        f'NNODES="${{NNODES:-{nodes}}}"',
        'NODE_RANK="${NODE_RANK:-0}"',
        'MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"',
        f'MASTER_PORT="${{MASTER_PORT:-{DEFAULT_MASTER_PORT}}}"',
        f'if [ "$NNODES" != "{nodes}" ]; then echo "this plan is for {nodes} node(s), NNODES=$NNODES" >&2; exit 2; fi',
        "export NNODES NODE_RANK MASTER_ADDR MASTER_PORT",
    ]
    if is_cpu(cfg.cluster.gpu):
        # as `ftplan run` sets them (runner/launcher.py, launch_env): DeepSpeed's CPU accelerator, one thread a rank
        out += ['export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES=""']
        if cfg.world_size > 1:
            out += ['export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"']
    out += [
        f'LAUNCHER="${{1:-{"torchrun" if multi else "ftplan"}}}"',
        "shift $(( $# > 0 ? 1 : 0 ))",
        "",
        'case "$LAUNCHER" in',
    ]
    if not multi:
        out += ["  ftplan)",
                '    exec ftplan run "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;']
    out += ["  torchrun)", f'    exec {lines.torchrun} "$@" ;;']
    if lines.deepspeed:
        out += ["  deepspeed)"]
        if multi:
            out += [f'    : "${{HOSTS:?set HOSTS to the {nodes} node names, node 0 first}}"',
                    f'    for h in $HOSTS; do echo "$h slots={per_node}"; done > "$HERE/hostfile"']
        out += [f'    exec {lines.deepspeed} "$@" ;;']
    out += ["  accelerate)", f'    exec {lines.accelerate} "$@" ;;',
            "  llamafactory)", f"    exec {lines.llamafactory} ;;",
            '  *) echo "unknown launcher: $LAUNCHER" >&2; exit 2 ;;',
            "esac",
            "",
            "# The same plan with your own training script:"]
    out += [f"#   {line}" for line in lines.own_script]
    out += [_comment(f"# {note}") for note in switches.trainer_flag_notes(cfg)]  # what the Trainer flags cannot say
    offload = switches.activation_offload_note(cfg)
    if offload:
        out.append(_comment(f"# {offload}"))
    out += [_comment(f"# {note}") for note in switches.accelerate_notes(cfg)]  # what accelerate.yaml cannot say
    return "\n".join(out) + "\n"
