# Sourced by the training and teacher-cache scripts right after their GPUS: the launcher's defaults
# (one process per GPU of GPUS, one on the CPU when GPUS is empty; one node; a free port) and
# BASE_PATH, the repository. Every setting can be set from the environment.
# shellcheck shell=bash disable=SC2154   # GPUS comes from the sourcing script

# launcher
NPROC=${NPROC:-$(if [ -n "${GPUS}" ]; then echo "${GPUS}" | tr ',' '\n' | grep -c .; else echo 1; fi)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-$(python3 -c "import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])")}   # a free port; set it for multi-node
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
