#!/usr/bin/env bash
# KD of TinyLLaMA-1.1B (LoRA) from a LoRA-fine-tuned Llama-2-7B teacher on Dolly, with the divergence
# KD_OBJ, any registered objective with its parameters and plug-ins as in
# scripts/gpt2/vanilla_kd_gpt2_base.sh; the ToDi paper's settings. Every setting below can be set from
# the environment; GPUS= (empty) runs on the CPU with NPROC processes.
# The launcher, runtime and KD settings every KD script shares (teacher cache, OBJ_ARGS, AdaKD):
# scripts/kd_common.sh.
set -eo pipefail

# launcher: the paper's 4 GPUs
GPUS=${GPUS-0,1,2,3}
source "$(dirname "${BASH_SOURCE[0]}")/../kd_common.sh"
# model
CKPT_TYPE=${CKPT_TYPE:-tinyllama}
CKPT_NAME=${CKPT_NAME:-tinyllama-1.1b-3T}
CKPT_PATH=${CKPT_PATH:-${BASE_PATH}/model_hub/${CKPT_TYPE}/${CKPT_NAME}}
TEACHER_MODEL_TYPE=${TEACHER_MODEL_TYPE:-llama2}
TEACHER_MODEL_NAME=${TEACHER_MODEL_NAME:-llama2-7b-hf}
TEACHER_MODEL_PATH=${TEACHER_MODEL_PATH:-${BASE_PATH}/model_hub/${TEACHER_MODEL_TYPE}/${TEACHER_MODEL_NAME}}
TEACHER_PEFT_PATH=${TEACHER_PEFT_PATH:-}   # the teacher's LoRA adapter: a checkpoint of the family's sft_teacher_*.sh
# data
DATA_DIR=${DATA_DIR:-${BASE_PATH}/data/dolly/}
DEV_NUM=${DEV_NUM:-1000}
# task
TASK=${TASK:-vanilla_kd}
CRITERION=${CRITERION:-various_divergence}
# hp
BATCH_SIZE=${BATCH_SIZE:-4}
LR=${LR:-0.001}
GRAD_ACC=${GRAD_ACC:-2}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-16}
EPOCH=${EPOCH:-10}
LORA_RANK=${LORA_RANK:-256}
LORA_ALPHA=${LORA_ALPHA:-8}
LORA_DROPOUT=${LORA_DROPOUT:-0.1}
# the objective
KD_RATE=${KD_RATE:-0.5}
KD_TEMP=${KD_TEMP:-2.0}
KD_OBJ=${KD_OBJ:-forward_kl}   # any registered objective or alias (scripts/gpt2/vanilla_kd_gpt2_base.sh lists them)
# its parameters (empty: the registry default), the flags of scripts/gpt2/vanilla_kd_gpt2_base.sh
TODI_BETA=${TODI_BETA:-}                   # ToDi
SKEW_LAMBDA=${SKEW_LAMBDA:-}               # skewed_forward_kl, skewed_reverse_kl
ADAPTIVE_KL_ALPHA=${ADAPTIVE_KL_ALPHA:-}   # adaptive_kl
GJSD_BETA=${GJSD_BETA:-}                   # generalized_jsd (GKD)
AB_ALPHA=${AB_ALPHA:-}                     # ab_divergence (ABKD)
AB_BETA=${AB_BETA:-}                       # ab_divergence (ABKD)
OBJ_TAG=${OBJ_TAG:-${TODI_BETA:+-todi^beta=${TODI_BETA}}${SKEW_LAMBDA:+-skew^lambda=${SKEW_LAMBDA}}${ADAPTIVE_KL_ALPHA:+-adaptive^kl^alpha=${ADAPTIVE_KL_ALPHA}}${GJSD_BETA:+-gjsd^beta=${GJSD_BETA}}${AB_ALPHA:+-ab^alpha=${AB_ALPHA}}${AB_BETA:+-ab^beta=${AB_BETA}}${OBJ_ARGS:+$(printf '%s' "${OBJ_ARGS}" | sed -E -e 's/^ +| +$//g' -e 's/ *--/-/g' -e 's/[ =]+/=/g' -e 's/([a-z])-([a-z])/\1^\2/g' -e 's/([a-z])-([a-z])/\1^\2/g')}}   # the parameters set above, in the run's name
# length
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
# seed and checkpoints kept
SEED=${SEED:-10}
SAVE_BEST_N_CKPTS=${SAVE_BEST_N_CKPTS:-1}
# the run's name and directory
CONFIG=${CONFIG:-${KD_OBJ}${OBJ_TAG}-lora-rank=${LORA_RANK}-alpha=${LORA_ALPHA}-dropout=${LORA_DROPOUT}-${PRECISION}}
SETTING=${SETTING:-criterion=${CRITERION}__${CONFIG}${ADAKD_TAG}${DATA_TAG}__teacher=$(teacher_name "${TEACHER_MODEL_PATH}" "${TEACHER_PEFT_PATH}")__kd^rate=${KD_RATE}__kd^temp=${KD_TEMP}__epoch=${EPOCH}__bsz=${BATCH_SIZE}x${GRAD_ACC}x${NPROC}x${NNODES}=$((BATCH_SIZE * GRAD_ACC * NPROC * NNODES))__lr=${LR}$(run_name_tail)${TEACHER_CACHE:+__cache}}
SAVE_PATH=${SAVE_PATH:-${BASE_PATH}/outputs/${CKPT_TYPE}/${CKPT_NAME}/${TASK}/$(run_folder_name "${SETTING}")}

if [ -z "${TEACHER_PEFT_PATH}" ] && [ -z "${TEACHER_CACHE}" ]; then
    echo "set TEACHER_PEFT_PATH to the teacher's LoRA adapter (a checkpoint of the family's sft_teacher_*.sh, e.g. scripts/tinyllama/sft_teacher_llama2.sh)" >&2
    exit 2
fi

OPTS=""   # this script's own flags; the shared ones and the launch: scripts/train_launch.sh
if [ -n "${TEACHER_CACHE}" ]; then   # the cache holds the teacher's outputs: the 7B teacher is not loaded (nor hashed)
    OPTS+=" --teacher-cache ${TEACHER_CACHE}"
else
    OPTS+=" --teacher-model-path ${TEACHER_MODEL_PATH}"
    OPTS+=" --teacher-peft-path ${TEACHER_PEFT_PATH}"
fi
OPTS+=" --teacher-model-type ${TEACHER_MODEL_TYPE}"
OPTS+=" --gradient-checkpointing"
OPTS+=" --kd-rate ${KD_RATE}"
OPTS+=" --kd-temperature ${KD_TEMP}"
OPTS+=" --kd-objective ${KD_OBJ}"
OPTS+=" --peft lora"
OPTS+=" --peft-lora-r ${LORA_RANK}"
OPTS+=" --peft-lora-alpha ${LORA_ALPHA}"
OPTS+=" --peft-lora-dropout ${LORA_DROPOUT}"
source "$(dirname "${BASH_SOURCE[0]}")/../train_launch.sh"
