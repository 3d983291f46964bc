#!/usr/bin/env bash
# The teacher cache of the TinyLLaMA pair: one pass of Llama-2 7B with its LoRA adapter over Dolly's
# training split (CACHE_MODE=hidden: exact, 8 KB per token in bf16; topk: the top-TOP_K targets at
# KD_TEMP). Then distil without the teacher, for every objective:
#   CACHE_MODE=hidden TEACHER_PEFT_PATH=outputs/llama2/.../epoch... bash scripts/tinyllama/cache_teacher_llama2.sh
#   TEACHER_CACHE=outputs/cache/llama2-7b-hf-dolly-hidden-len512-256 KD_OBJ=ToDi bash scripts/tinyllama/vanilla_kd_tinyllama.sh
# The settings and the launch are those of scripts/gpt2/cache_teacher_gpt2_xlarge.sh; this script only
# names the teacher and its adapter (and a smaller batch for the 7B), then runs it.
set -eo pipefail

# the teacher
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TEACHER_MODEL_TYPE=${TEACHER_MODEL_TYPE:-llama2}
TEACHER_MODEL_NAME=${TEACHER_MODEL_NAME:-llama2-7b-hf}
TEACHER_MODEL_PATH=${TEACHER_MODEL_PATH:-${BASE_PATH}/model_hub/${TEACHER_MODEL_TYPE}/${TEACHER_MODEL_NAME}}
TEACHER_PEFT_PATH=${TEACHER_PEFT_PATH:-}   # the teacher's LoRA adapter: a checkpoint of sft_teacher_llama2.sh
BATCH_SIZE=${BATCH_SIZE:-4}

if [ -z "${TEACHER_PEFT_PATH}" ]; then
    echo "set TEACHER_PEFT_PATH to the teacher's LoRA adapter (a checkpoint of scripts/tinyllama/sft_teacher_llama2.sh)" >&2
    exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/../gpt2/cache_teacher_gpt2_xlarge.sh"
