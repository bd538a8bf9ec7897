#!/usr/bin/env bash
# Written by ftplan for <PLAN> (lora llama-2-70b on 2x8xA800: 2 node(s) x 8 processes).
#
# Usage:  MODEL_PATH=/path/to/model DATA=/path/to/train.jsonl bash launch.sh [LAUNCHER [RUN OPTIONS]]
#   LAUNCHER: torchrun (default), deepspeed, accelerate, llamafactory
#   RUN OPTIONS go to the training (not llamafactory), e.g. --output run/ --max-steps 500
# Multi-node: run on each of the 2 nodes with NODE_RANK=0..1 and MASTER_ADDR set to
# node 0's address (torchrun, accelerate, llamafactory).
# The deepspeed launcher instead runs on node 0 only and starts the others over ssh (pdsh):
# set HOSTS to the node names, node 0 first.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${MODEL_PATH:?set MODEL_PATH to the model directory}"
: "${DATA:?set DATA to the training data file}"
NNODES="${NNODES:-2}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ "$NNODES" != "2" ]; then echo "this plan is for 2 node(s), NNODES=$NNODES" >&2; exit 2; fi
export NNODES NODE_RANK MASTER_ADDR MASTER_PORT
LAUNCHER="${1:-torchrun}"
shift $(( $# > 0 ? 1 : 0 ))

case "$LAUNCHER" in
  torchrun)
    exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node 8 -m runner.train "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;
  deepspeed)
    : "${HOSTS:?set HOSTS to the 2 node names, node 0 first}"
    for h in $HOSTS; do echo "$h slots=8"; done > "$HERE/hostfile"
    exec deepspeed --hostfile "$HERE/hostfile" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --no_local_rank --module runner.train "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;
  accelerate)
    exec accelerate launch --config_file "$HERE/accelerate.yaml" --num_machines "$NNODES" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" -m runner.train "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;
  llamafactory)
    exec env FORCE_TORCHRUN=1 llamafactory-cli train "$HERE/llamafactory.yaml" ;;
  *) echo "unknown launcher: $LAUNCHER" >&2; exit 2 ;;
esac

# The same plan with your own training script:
#   torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node 8 train.py --deepspeed "$HERE/ds_config.trainer.json"  # transformers Trainer script
#   deepspeed --hostfile "$HERE/hostfile" train.py --deepspeed_config "$HERE/ds_config.json"  # deepspeed.initialize script
#   accelerate launch --config_file "$HERE/accelerate.yaml" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" train.py  # accelerate script
