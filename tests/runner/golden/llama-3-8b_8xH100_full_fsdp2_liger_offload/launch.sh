#!/usr/bin/env bash
# Written by ftplan for <PLAN> (full llama-3-8b on 8xH100: 1 node(s) x 8 processes).
#
# Usage:  MODEL_PATH=/path/to/model DATA=/path/to/train.jsonl bash launch.sh [LAUNCHER [RUN OPTIONS]]
#   LAUNCHER: ftplan (default: `ftplan run` starts the launcher itself), torchrun, accelerate, llamafactory
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
  accelerate)
    exec accelerate launch --config_file "$HERE/accelerate.yaml" --num_machines "$NNODES" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" -m runner.train "$HERE/plan.json" --model-path "$MODEL_PATH" --data "$DATA" "$@" ;;
  llamafactory)
    exec accelerate launch --config_file "$HERE/accelerate.yaml" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" src/train.py "$HERE/llamafactory.yaml" ;;
  *) echo "unknown launcher: $LAUNCHER" >&2; exit 2 ;;
esac

# The same plan with your own training script:
#   torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node 8 train.py --activation_checkpointing True --activation_checkpointing_kwargs '{"use_reentrant": false, "offload": true}' --use_liger_kernel True  # your DDP/FSDP script
#   accelerate launch --config_file "$HERE/accelerate.yaml" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" train.py  # accelerate script
# activation offload: `ftplan run` keeps every tensor a training step saves in host memory (torch.autograd.graph.save_on_cpu around the step, runner/run_common.py offloading_trainer); the Trainer's activation_checkpointing_kwargs offload here keeps each checkpointed layer's input there, the part the plan counts; the LM head's and the loss's saved tensors stay on the GPU.
# Liger kernels: accelerate's config file has no Liger key. `ftplan run` and the Trainer apply them to the model before training; an accelerate script of your own does so before accelerator.prepare, as the Trainer does (transformers/trainer.py): liger_kernel.transformers._apply_liger_kernel_to_instance(model=model, rope=True, swiglu=True, rms_norm=True, cross_entropy=False, fused_linear_cross_entropy=True).
