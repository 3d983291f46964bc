#!/usr/bin/env bash
# The teacher cache of the GPT-2 pair: one pass of the fine-tuned GPT-2 XL over Dolly's training
# split, storing per response token its top-TOP_K token ids and log-probabilities at KD_TEMP (the
# rest of the distribution as one bucket). Then distil without the teacher, for every objective:
#   TEACHER_MODEL_PATH=outputs/.../epoch... bash scripts/gpt2/cache_teacher_gpt2_xlarge.sh
#   TEACHER_CACHE=outputs/cache/gpt2-xlarge-dolly-k64-T2.0 KD_OBJ=ToDi bash scripts/gpt2/vanilla_kd_gpt2_base.sh
# KD_TEMP, MAX_LENGTH and MAX_PROMPT_LENGTH must be the KD run's (the run checks). Rerunning the
# same command after an interruption computes only the missing examples. GPUS= (empty): the CPU.
set -eo pipefail

# launcher: 4 GPUs; the rest of the launcher and BASE_PATH: scripts/common.sh
GPUS=${GPUS-0,1,2,3}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
# teacher and data
TEACHER_MODEL_NAME=${TEACHER_MODEL_NAME:-gpt2-xlarge}
TEACHER_MODEL_PATH=${TEACHER_MODEL_PATH:-}   # the SFT teacher: a checkpoint of sft_teacher_gpt2_xlarge.sh
TEACHER_PEFT_PATH=${TEACHER_PEFT_PATH:-}
DATA_DIR=${DATA_DIR:-${BASE_PATH}/data/dolly}
# what is cached (the KD run's settings)
TOP_K=${TOP_K:-64}
KD_TEMP=${KD_TEMP:-2.0}
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
CACHE_DTYPE=${CACHE_DTYPE:-fp16}
BATCH_SIZE=${BATCH_SIZE:-16}
CACHE_DIR=${CACHE_DIR:-${BASE_PATH}/outputs/cache/${TEACHER_MODEL_NAME}-$(basename "${DATA_DIR}")-k${TOP_K}-T${KD_TEMP}}
EXTRA_OPTS=${EXTRA_OPTS:-}

if [ -z "${TEACHER_MODEL_PATH}" ]; then
    echo "set TEACHER_MODEL_PATH to the fine-tuned teacher (a checkpoint of scripts/gpt2/sft_teacher_gpt2_xlarge.sh)" >&2
    exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/../cache_launch.sh"
