#!/usr/bin/env bash
# Written by ftplan for <PLAN> (full llama-2-7b on 8xA800: 1 node(s) x 8 processes).
#
# Usage:  MODEL_PATH=/path/to/model DATA=/path/to/train.jsonl bash launch.sh [LAUNCHER [RUN OPTIONS]]
#   LAUNCHER: ftplan (default: `ftplan run` starts the launcher itself), torchrun, deepspeed, accelerate, llamafactory
#   RUN OPTIONS go to the training (not llamafactory), e.g. --output run/ --max-steps 500
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${MODEL_PATH:?set MODEL_PATH to the model directory}"
: "${DATA:?set DATA to the training data file}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ "$NNODES" != "1" ]; then echo "this plan is for 1 node(s), NNODES=$NNODES" >&2; exit 2; fi
export NNODES NODE_RANK MASTER_ADDR MASTER_PORT
LAUNCHER="${1:-ftplan}"
shift $(( $# > 0 ? 1 : 0 ))

case "$LAUNCHER" in
  ftplan)
    exec ftplan run "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;
  torchrun)
    exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node 8 -m runner.train "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;
  deepspeed)
    exec deepspeed --num_gpus 8 --master_port "$MASTER_PORT" --no_local_rank --module runner.train "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;
  accelerate)
    exec accelerate launch --config_file "$HERE/accelerate.yaml" --num_machines "$NNODES" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" -m runner.train "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;
  llamafactory)
    exec env FORCE_TORCHRUN=1 llamafactory-cli train "$HERE/llamafactory.yaml" ;;
  *) echo "unknown launcher: $LAUNCHER" >&2; exit 2 ;;
esac

# The same plan with your own training script:
#   torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node 8 train.py --deepspeed "$HERE/ds_config.trainer.json" --activation_checkpointing True --activation_checkpointing_kwargs '{"use_reentrant": false}'  # transformers Trainer script
#   deepspeed --num_gpus 8 train.py --deepspeed_config "$HERE/ds_config.json"  # deepspeed.initialize script
#   accelerate launch --config_file "$HERE/accelerate.yaml" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" train.py  # accelerate script
