#!/usr/bin/env bash
# SFT of GPT-2 base on Dolly (the student baseline), with the ToDi paper's settings. Every setting
# below can be set from the environment; GPUS= (empty) runs on the CPU with NPROC processes. The
# launcher and runtime settings every training script shares: scripts/train_common.sh.
set -eo pipefail

# launcher: the paper's 4 GPUs
GPUS=${GPUS-0,1,2,3}
source "$(dirname "${BASH_SOURCE[0]}")/../train_common.sh"
# model
CKPT_TYPE=${CKPT_TYPE:-gpt2}
CKPT_NAME=${CKPT_NAME:-gpt2-base}
CKPT_PATH=${CKPT_PATH:-${BASE_PATH}/model_hub/${CKPT_TYPE}/${CKPT_NAME}}
# data
DATA_DIR=${DATA_DIR:-${BASE_PATH}/data/dolly/}
DEV_NUM=${DEV_NUM:-1000}
# task
TASK=${TASK:-sft}
CRITERION=${CRITERION:-cross_entropy}
# hp
BATCH_SIZE=${BATCH_SIZE:-4}
LR=${LR:-0.0005}
GRAD_ACC=${GRAD_ACC:-2}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-32}
EPOCH=${EPOCH:-20}
# length
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
# seed and checkpoints kept
SEED=${SEED:-10}
SAVE_BEST_N_CKPTS=${SAVE_BEST_N_CKPTS:-1}
# the run's name and directory
CONFIG=${CONFIG:-default-${PRECISION}}
SETTING=${SETTING:-criterion=${CRITERION}__${CONFIG}__epoch=${EPOCH}__bsz=${BATCH_SIZE}x${GRAD_ACC}x${NPROC}x${NNODES}=$((BATCH_SIZE * GRAD_ACC * NPROC * NNODES))__lr=${LR}$(run_name_tail)}
SAVE_PATH=${SAVE_PATH:-${BASE_PATH}/outputs/${CKPT_TYPE}/${CKPT_NAME}/${TASK}/$(run_folder_name "${SETTING}")}

OPTS=""   # this script's own flags; the shared ones and the launch: scripts/train_launch.sh
source "$(dirname "${BASH_SOURCE[0]}")/../train_launch.sh"
