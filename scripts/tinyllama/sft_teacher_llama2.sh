#!/usr/bin/env bash
# SFT (LoRA) of the Llama-2-7B teacher on Dolly, with the ToDi paper's settings: the student's SFT
# recipe (scripts/tinyllama/sft_tinyllama.sh, its other settings and the launch) with the teacher's
# model, gradient checkpointing and a smaller evaluation batch. Every setting below and the student
# script's can be set from the environment; GPUS= (empty) runs on the CPU with NPROC processes.
set -eo pipefail

# the teacher's recipe
CKPT_TYPE=${CKPT_TYPE:-llama2}
CKPT_NAME=${CKPT_NAME:-llama2-7b-hf}
BATCH_SIZE=${BATCH_SIZE:-8}
LR=${LR:-0.001}
GRAD_ACC=${GRAD_ACC:-1}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-8}
EPOCH=${EPOCH:-10}
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-1}

source "$(dirname "${BASH_SOURCE[0]}")/sft_tinyllama.sh"
