#!/usr/bin/env bash
# The teacher cache of the TinyLLaMA pair: one pass of Llama-2 7B with its LoRA adapter over Dolly's training
# split, storing per response token its top-TOP_K token ids and log-probabilities at KD_TEMP (the
# rest of the distribution as one bucket). Then distil without the teacher, for every objective:
#   TEACHER_PEFT_PATH=outputs/llama2/.../epoch... bash scripts/tinyllama/cache_teacher_llama2.sh
#   TEACHER_CACHE=outputs/cache/llama2-7b-hf-dolly-k64-T2.0 KD_OBJ=ToDi bash scripts/tinyllama/vanilla_kd_tinyllama.sh
# KD_TEMP, MAX_LENGTH and MAX_PROMPT_LENGTH must be the KD run's (the run checks). Rerunning the
# same command after an interruption computes only the missing examples. GPUS= (empty): the CPU.
set -eo pipefail

# launcher
GPUS=${GPUS-0,1,2,3}
NPROC=${NPROC:-$(if [ -n "${GPUS}" ]; then echo "${GPUS}" | tr ',' '\n' | grep -c .; else echo 1; fi)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-$(python3 -c "import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])")}   # a free port; set it for multi-node
# teacher and data
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TEACHER_MODEL_TYPE=${TEACHER_MODEL_TYPE:-llama2}
TEACHER_MODEL_NAME=${TEACHER_MODEL_NAME:-llama2-7b-hf}
TEACHER_MODEL_PATH=${TEACHER_MODEL_PATH:-${BASE_PATH}/model_hub/${TEACHER_MODEL_TYPE}/${TEACHER_MODEL_NAME}}
TEACHER_PEFT_PATH=${TEACHER_PEFT_PATH:-}   # the teacher's LoRA adapter: a checkpoint of sft_teacher_llama2.sh
DATA_DIR=${DATA_DIR:-${BASE_PATH}/data/dolly}
# what is cached (the KD run's settings)
TOP_K=${TOP_K:-64}
KD_TEMP=${KD_TEMP:-2.0}
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
CACHE_DTYPE=${CACHE_DTYPE:-fp16}
BATCH_SIZE=${BATCH_SIZE:-4}
CACHE_DIR=${CACHE_DIR:-${BASE_PATH}/outputs/cache/${TEACHER_MODEL_NAME}-$(basename "${DATA_DIR}")-k${TOP_K}-T${KD_TEMP}}
EXTRA_OPTS=${EXTRA_OPTS:-}

if [ -z "${TEACHER_PEFT_PATH}" ]; then
    echo "set TEACHER_PEFT_PATH to the teacher's LoRA adapter (a checkpoint of scripts/tinyllama/sft_teacher_llama2.sh)" >&2
    exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/../cache_launch.sh"
