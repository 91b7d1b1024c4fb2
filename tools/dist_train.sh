#!/usr/bin/env bash
# Data-parallel training with torchrun, one process per GPU (per CPU process without CUDA: gloo).
#   bash tools/dist_train.sh CONFIG NPROC_PER_NODE [train.py args...]
# Many nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) set.
# The lr follows the real batch size with --auto-scale-lr (base: 16 = 8 GPUs x 2 images).
set -euo pipefail

CONFIG=$1
NPROC_PER_NODE=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-${PORT:-29500}}
# The interpreter: PYTHON=/path/to/venv/bin/python when the environment is not activated.
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$MASTER_PORT" \
    --nproc_per_node="$NPROC_PER_NODE" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "${@:3}"
