#!/usr/bin/env bash
# The teacher cache of the GPT-2 pair: one pass of the fine-tuned GPT-2 XL over Dolly's training
# split. CACHE_MODE=hidden (exact) stores per response token the teacher's final hidden state and its
# output layer once: KD from it equals live KD for every objective, temperature and AdaKD setting.
# CACHE_MODE=topk (small) stores the top-TOP_K token ids and log-probabilities at KD_TEMP (the rest
# as one bucket): a lower bound of the divergence (docs/teacher-cache.md says when that is safe).
# Then distil without the teacher, for every objective:
#   CACHE_MODE=hidden TEACHER_MODEL_PATH=outputs/.../epoch... bash scripts/gpt2/cache_teacher_gpt2_xlarge.sh
#   TEACHER_CACHE=outputs/cache/gpt2-xlarge-dolly-hidden-len512-256 KD_OBJ=ToDi bash scripts/gpt2/vanilla_kd_gpt2_base.sh
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
CACHE_MODE=${CACHE_MODE:-topk}   # hidden: exact (H x 2 bytes per token in bf16); topk: TOP_K targets at KD_TEMP
TOP_K=${TOP_K:-64}
KD_TEMP=${KD_TEMP:-2.0}
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
CACHE_DTYPE=${CACHE_DTYPE:-}    # topk: fp16 (default) or fp32; hidden: bf16/fp16/fp32 (default: the teacher's precision)
BATCH_SIZE=${BATCH_SIZE:-16}
if [ "${CACHE_MODE}" = hidden ]; then what=hidden; else what=k${TOP_K}-T${KD_TEMP}; fi
CACHE_DIR=${CACHE_DIR:-${BASE_PATH}/outputs/cache/${TEACHER_MODEL_NAME}-$(basename "${DATA_DIR}")-${what}-len${MAX_LENGTH}-${MAX_PROMPT_LENGTH}}
EXTRA_OPTS=${EXTRA_OPTS:-}

if [ -z "${TEACHER_MODEL_PATH}" ]; then
    echo "set TEACHER_MODEL_PATH to the fine-tuned teacher (a checkpoint of scripts/gpt2/sft_teacher_gpt2_xlarge.sh)" >&2
    exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/../cache_launch.sh"
