#!/usr/bin/env bash
# KD of TinyLLaMA-1.1B (LoRA) from a LoRA-fine-tuned Llama-2-7B teacher on Dolly, with the divergence
# KD_OBJ, any registered objective with its parameters and plug-ins as in
# scripts/gpt2/vanilla_kd_gpt2_base.sh; the ToDi paper's settings. Every setting below can be set from
# the environment; GPUS= (empty) runs on the CPU with NPROC processes.
set -eo pipefail

# launcher
GPUS=${GPUS-0,1,2,3}
NPROC=${NPROC:-$(if [ -n "${GPUS}" ]; then echo "${GPUS}" | tr ',' '\n' | grep -c .; else echo 1; fi)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-$(python3 -c "import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])")}   # a free port; set it for multi-node
# model
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
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
# hp
BATCH_SIZE=${BATCH_SIZE:-4}
LR=${LR:-0.001}
GRAD_ACC=${GRAD_ACC:-2}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-16}
EPOCH=${EPOCH:-10}
LORA_RANK=${LORA_RANK:-256}
LORA_ALPHA=${LORA_ALPHA:-8}
LORA_DROPOUT=${LORA_DROPOUT:-0.1}
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
OBJ_ARGS=${OBJ_ARGS:-}                     # other objective flags, verbatim, e.g. a plug-in objective's "--scaled-gamma 2"
PLUGINS=${PLUGINS:-}                       # space-separated plug-in .py files or modules (one --plugin each), e.g. ones that register objectives
TEACHER_CACHE=${TEACHER_CACHE:-}             # a teacher cache (scripts/*/cache_teacher_*.sh): distil from it, no teacher loaded
ADAKD=${ADAKD:-0}                              # 1: AdaKD around KD_OBJ (token focusing + per-token temperatures), with:
ADAKD_C=${ADAKD_C:-0.5}                        # IDTS: tau = KD_TEMP * exp(-c * tanh(log(score / median)))
ADAKD_EMA=${ADAKD_EMA:-0.99}                   # LATF: EMA decay of the loss trend
ADAKD_EPS=${ADAKD_EPS:-0.05}                   # LATF: loss-ratio threshold (AdaKD's --loss-ratio-eps)
ADAKD_DELTA=${ADAKD_DELTA:-0.05}               # LATF: step of the focused-token ratio (AdaKD's --sample-ratio-eps)
ADAKD_WARMUP=${ADAKD_WARMUP:-0.05}             # fraction of the optimizer steps before LATF adapts
ADAKD_MIN_RATIO=${ADAKD_MIN_RATIO:-0.1}        # LATF: the smallest ratio of tokens kept for KD
ADAKD_DIFFICULTY=${ADAKD_DIFFICULTY:-hellinger}   # token difficulty (AdaKD's --rule)
ADAKD_TAG=${ADAKD_TAG:-$(if [ "${ADAKD}" = 1 ]; then echo "__adakd^c=${ADAKD_C}^eps=${ADAKD_EPS}^delta=${ADAKD_DELTA}^${ADAKD_DIFFICULTY}"; fi)}
OBJ_TAG=${OBJ_TAG:-${TODI_BETA:+-todi^beta=${TODI_BETA}}${SKEW_LAMBDA:+-skew^lambda=${SKEW_LAMBDA}}${ADAPTIVE_KL_ALPHA:+-adaptive^kl^alpha=${ADAPTIVE_KL_ALPHA}}${GJSD_BETA:+-gjsd^beta=${GJSD_BETA}}${AB_ALPHA:+-ab^alpha=${AB_ALPHA}}${AB_BETA:+-ab^beta=${AB_BETA}}${OBJ_ARGS:+$(printf '%s' "${OBJ_ARGS}" | sed -E -e 's/^ +| +$//g' -e 's/ *--/-/g' -e 's/[ =]+/=/g' -e 's/([a-z])-([a-z])/\1^\2/g' -e 's/([a-z])-([a-z])/\1^\2/g')}}   # the parameters set above, in the run's name
# length
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
# runtime
PRECISION=${PRECISION:-$(if [ -n "${GPUS}" ]; then echo bf16; else echo fp32; fi)}
ZERO_STAGE=${ZERO_STAGE:-1}
DS_CONFIG=${DS_CONFIG:-${BASE_PATH}/configs/deepspeed/ds_config_zero${ZERO_STAGE}_${PRECISION}.json}
CRITERION=${CRITERION:-various_divergence}
LOG_INTERVAL=${LOG_INTERVAL:-50}
EVAL_GEN_REPEAT=${EVAL_GEN_REPEAT:-3}
SAVE_BEST_N_CKPTS=${SAVE_BEST_N_CKPTS:-1}
CONFIG=${CONFIG:-${KD_OBJ}${OBJ_TAG}-lora-rank=${LORA_RANK}-alpha=${LORA_ALPHA}-dropout=${LORA_DROPOUT}-${PRECISION}}
SETTING=${SETTING:-criterion=${CRITERION}__${CONFIG}${ADAKD_TAG}__teacher=${TEACHER_MODEL_NAME}__kd^rate=${KD_RATE}__kd^temp=${KD_TEMP}__epoch=${EPOCH}__bsz=${BATCH_SIZE}x${GRAD_ACC}x${NPROC}x${NNODES}=$((BATCH_SIZE * GRAD_ACC * NPROC * NNODES))__lr=${LR}}
SAVE_PATH=${SAVE_PATH:-${BASE_PATH}/outputs/${CKPT_TYPE}/${CKPT_NAME}/${TASK}/${SETTING}}
# seed
SEED=${SEED:-10}
EXTRA_OPTS=${EXTRA_OPTS:-}

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
if [ "${ADAKD}" = 1 ]; then
    OPTS+=" --adakd --adakd-c ${ADAKD_C} --adakd-ema ${ADAKD_EMA} --adakd-eps ${ADAKD_EPS} --adakd-delta ${ADAKD_DELTA}"
    OPTS+=" --adakd-warmup ${ADAKD_WARMUP} --adakd-min-ratio ${ADAKD_MIN_RATIO} --adakd-difficulty ${ADAKD_DIFFICULTY}"
fi
source "$(dirname "${BASH_SOURCE[0]}")/../train_launch.sh"
