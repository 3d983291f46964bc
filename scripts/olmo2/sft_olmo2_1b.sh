#!/usr/bin/env bash
# SFT (LoRA) of OLMo-2-0425-1B on Dolly, the student baseline, with the TinyLLaMA recipe of the ToDi
# paper. Every setting below can be set from the environment; GPUS= (empty) runs on the CPU with NPROC
# processes.
# OLMo 2: pad = EOS <|endoftext|> (100257) as in the official code; 100,352 output rows for the
# 100,278-token dolma2 tokenizer: KD compares the first 100,278 (padding rows left out).
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
CKPT_TYPE=${CKPT_TYPE:-olmo2}
CKPT_NAME=${CKPT_NAME:-olmo-2-0425-1b}
CKPT_PATH=${CKPT_PATH:-${BASE_PATH}/model_hub/${CKPT_TYPE}/${CKPT_NAME}}
# data
DATA_DIR=${DATA_DIR:-${BASE_PATH}/data/dolly/}
DEV_NUM=${DEV_NUM:-1000}
# task
TASK=${TASK:-sft}
# hp
BATCH_SIZE=${BATCH_SIZE:-8}
LR=${LR:-0.001}
GRAD_ACC=${GRAD_ACC:-1}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-16}
EPOCH=${EPOCH:-10}
LORA_RANK=${LORA_RANK:-256}
LORA_ALPHA=${LORA_ALPHA:-8}
LORA_DROPOUT=${LORA_DROPOUT:-0.1}
# length
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
# runtime
PRECISION=${PRECISION:-$(if [ -n "${GPUS}" ]; then echo bf16; else echo fp32; fi)}
ZERO_STAGE=${ZERO_STAGE:-1}
DS_CONFIG=${DS_CONFIG:-${BASE_PATH}/configs/deepspeed/ds_config_zero${ZERO_STAGE}_${PRECISION}.json}
CRITERION=${CRITERION:-cross_entropy}
LOG_INTERVAL=${LOG_INTERVAL:-50}
EVAL_GEN_REPEAT=${EVAL_GEN_REPEAT:-3}
SAVE_BEST_N_CKPTS=${SAVE_BEST_N_CKPTS:-1}
CONFIG=${CONFIG:-lora-rank=${LORA_RANK}-alpha=${LORA_ALPHA}-dropout=${LORA_DROPOUT}-${PRECISION}}
SETTING=${SETTING:-criterion=${CRITERION}__${CONFIG}__epoch=${EPOCH}__bsz=${BATCH_SIZE}x${GRAD_ACC}x${NPROC}x${NNODES}=$((BATCH_SIZE * GRAD_ACC * NPROC * NNODES))__lr=${LR}}
SAVE_PATH=${SAVE_PATH:-${BASE_PATH}/outputs/${CKPT_TYPE}/${CKPT_NAME}/${TASK}/${SETTING}}
# seed
SEED=${SEED:-10}
EXTRA_OPTS=${EXTRA_OPTS:-}
PLUGINS=${PLUGINS:-}   # space-separated Python files or modules imported first (one --plugin each)

OPTS=""   # this script's own flags; the shared ones and the launch: scripts/train_launch.sh
OPTS+=" --peft lora"
OPTS+=" --peft-lora-r ${LORA_RANK}"
OPTS+=" --peft-lora-alpha ${LORA_ALPHA}"
OPTS+=" --peft-lora-dropout ${LORA_DROPOUT}"
source "$(dirname "${BASH_SOURCE[0]}")/../train_launch.sh"
