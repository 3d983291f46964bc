#!/usr/bin/env bash
# KD of GPT-2 base (student) from a fine-tuned GPT-2 XL (teacher) on Dolly, with the divergence
# KD_OBJ: any objective of the registry (code/todi/objectives), by name or alias: forward_kl,
# reverse_kl, js_divergence, tvd, skewed_forward_kl, skewed_reverse_kl, adaptive_kl, ToDi,
# generalized_jsd (GKD), ab_divergence (ABKD), or one a plug-in registers (PLUGINS). Its parameters
# come from TODI_BETA, SKEW_LAMBDA, ADAPTIVE_KL_ALPHA, GJSD_BETA, AB_ALPHA, AB_BETA (a flag only when
# set; empty: the registry's default) and OBJ_ARGS. Defaults are the ToDi paper's. Every setting below
# can be set from the environment, e.g.
#   KD_OBJ=ToDi TEACHER_MODEL_PATH=outputs/... bash scripts/gpt2/vanilla_kd_gpt2_base.sh
#   KD_OBJ=generalized_jsd GJSD_BETA=0.3 TEACHER_MODEL_PATH=... bash scripts/gpt2/vanilla_kd_gpt2_base.sh
#   PLUGINS=my_objective.py KD_OBJ=my_kl OBJ_ARGS="--my-gamma 2" TEACHER_MODEL_PATH=... bash scripts/gpt2/...
# GPUS= (empty) runs on the CPU (gloo) with NPROC processes. Extra flags: EXTRA_OPTS="--kd-impl chunked".
# The launcher, runtime and KD settings every KD script shares (teacher cache, OBJ_ARGS, AdaKD):
# scripts/kd_common.sh.
set -eo pipefail

# launcher: the paper's 4 GPUs
GPUS=${GPUS-0,1,2,3}
source "$(dirname "${BASH_SOURCE[0]}")/../kd_common.sh"
# model
CKPT_TYPE=${CKPT_TYPE:-gpt2}
CKPT_NAME=${CKPT_NAME:-gpt2-base}
CKPT_PATH=${CKPT_PATH:-${BASE_PATH}/model_hub/${CKPT_TYPE}/${CKPT_NAME}}
TEACHER_MODEL_TYPE=${TEACHER_MODEL_TYPE:-gpt2}
TEACHER_MODEL_PATH=${TEACHER_MODEL_PATH:-${BASE_PATH}/model_hub/gpt2/teacher-gpt2-1.5B}   # the paper's teacher: MiniLLM's GPT-2 XL fine-tuned on Dolly (scripts/download_models.sh); or a checkpoint of sft_teacher_gpt2_xlarge.sh
# data
DATA_DIR=${DATA_DIR:-${BASE_PATH}/data/dolly/}
DEV_NUM=${DEV_NUM:-1000}
# task
TASK=${TASK:-vanilla_kd}
CRITERION=${CRITERION:-various_divergence}
# hp
BATCH_SIZE=${BATCH_SIZE:-4}
LR=${LR:-0.0005}
GRAD_ACC=${GRAD_ACC:-2}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-32}
EPOCH=${EPOCH:-20}
# the objective
KD_RATE=${KD_RATE:-0.5}
KD_TEMP=${KD_TEMP:-2.0}
KD_OBJ=${KD_OBJ:-forward_kl}   # any registered objective or alias: forward_kl, reverse_kl, js_divergence, tvd, skewed_forward_kl, skewed_reverse_kl, adaptive_kl, ToDi, generalized_jsd, ab_divergence, or a plug-in's
# the objective's parameters: empty = its registry default; set only the chosen objective's (another's is an error)
TODI_BETA=${TODI_BETA:-}                   # ToDi: --todi-beta, α = sigmoid(β·log(p/q)) (default 1.0, the paper's)
SKEW_LAMBDA=${SKEW_LAMBDA:-}               # skewed_forward_kl, skewed_reverse_kl: --skew-lambda λ (default 0.1)
ADAPTIVE_KL_ALPHA=${ADAPTIVE_KL_ALPHA:-}   # adaptive_kl: --adaptive-kl-alpha, the teacher's tail mass (default 0.5)
GJSD_BETA=${GJSD_BETA:-}                   # generalized_jsd (GKD): --gjsd-beta, the mixture's teacher weight (default 0.5)
AB_ALPHA=${AB_ALPHA:-}                     # ab_divergence (ABKD): --ab-alpha (default 0.2)
AB_BETA=${AB_BETA:-}                       # ab_divergence (ABKD): --ab-beta (default 0.7)
OBJ_TAG=${OBJ_TAG:-${TODI_BETA:+-todi^beta=${TODI_BETA}}${SKEW_LAMBDA:+-skew^lambda=${SKEW_LAMBDA}}${ADAPTIVE_KL_ALPHA:+-adaptive^kl^alpha=${ADAPTIVE_KL_ALPHA}}${GJSD_BETA:+-gjsd^beta=${GJSD_BETA}}${AB_ALPHA:+-ab^alpha=${AB_ALPHA}}${AB_BETA:+-ab^beta=${AB_BETA}}${OBJ_ARGS:+$(printf '%s' "${OBJ_ARGS}" | sed -E -e 's/^ +| +$//g' -e 's/ *--/-/g' -e 's/[ =]+/=/g' -e 's/([a-z])-([a-z])/\1^\2/g' -e 's/([a-z])-([a-z])/\1^\2/g')}}   # the parameters set above, in the run's name
# length
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
# seed and checkpoints kept
SEED=${SEED:-10}
SAVE_BEST_N_CKPTS=${SAVE_BEST_N_CKPTS:-1}
# the run's name and directory
CONFIG=${CONFIG:-${KD_OBJ}${OBJ_TAG}-${PRECISION}}
SETTING=${SETTING:-criterion=${CRITERION}__${CONFIG}${ADAKD_TAG}${DATA_TAG}__teacher=$(teacher_name "${TEACHER_MODEL_PATH}")__kd^rate=${KD_RATE}__kd^temp=${KD_TEMP}__epoch=${EPOCH}__bsz=${BATCH_SIZE}x${GRAD_ACC}x${NPROC}x${NNODES}=$((BATCH_SIZE * GRAD_ACC * NPROC * NNODES))__lr=${LR}$(run_name_tail)${TEACHER_CACHE:+__cache}}
SAVE_PATH=${SAVE_PATH:-${BASE_PATH}/outputs/${CKPT_TYPE}/${CKPT_NAME}/${TASK}/$(run_folder_name "${SETTING}")}

if [ -z "${TEACHER_CACHE}" ] && [ "${TEACHER_MODEL_PATH}" = "${BASE_PATH}/model_hub/gpt2/teacher-gpt2-1.5B" ] \
        && [ ! -d "${TEACHER_MODEL_PATH}" ]; then
    echo "the default teacher ${TEACHER_MODEL_PATH} is not there: get it (MODELS=teacher-gpt2-1.5B bash scripts/download_models.sh), or set TEACHER_MODEL_PATH to a checkpoint of scripts/gpt2/sft_teacher_gpt2_xlarge.sh" >&2
    exit 2
fi

OPTS=""   # this script's own flags; the shared ones and the launch: scripts/train_launch.sh
if [ -n "${TEACHER_CACHE}" ]; then   # the cache holds the teacher's outputs: the teacher is not loaded
    OPTS+=" --teacher-cache ${TEACHER_CACHE}"
else
    OPTS+=" --teacher-model-path ${TEACHER_MODEL_PATH}"
fi
OPTS+=" --teacher-model-type ${TEACHER_MODEL_TYPE}"
OPTS+=" --kd-rate ${KD_RATE}"
OPTS+=" --kd-temperature ${KD_TEMP}"
OPTS+=" --kd-objective ${KD_OBJ}"
source "$(dirname "${BASH_SOURCE[0]}")/../train_launch.sh"
