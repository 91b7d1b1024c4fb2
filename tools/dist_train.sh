#!/usr/bin/env bash
# Data-parallel training with torchrun, one process per GPU (per CPU process without CUDA: gloo).
#   bash tools/dist_train.sh CONFIG NPROC_PER_NODE [train.py args...]
# Many nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) set.
# One node without MASTER_PORT (or PORT): torchrun --standalone, whose rendezvous store listens
# on a port the system picks, so runs side by side on one machine never collide on a port.
# The lr follows the real batch size with --auto-scale-lr (base: 16 = 8 GPUs x 2 images).
set -euo pipefail

CONFIG=$1
NPROC_PER_NODE=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-${PORT:-}}
# The interpreter: PYTHON=/path/to/venv/bin/python when the environment is not activated.
PYTHON=${PYTHON:-python}

if [[ "$NNODES" == 1 && -z "$MASTER_PORT" ]]; then
    RENDEZVOUS=(--standalone)
else
    RENDEZVOUS=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR"
                --master_port="${MASTER_PORT:-29500}")
fi

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    "${RENDEZVOUS[@]}" \
    --nproc_per_node="$NPROC_PER_NODE" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "${@:3}"
