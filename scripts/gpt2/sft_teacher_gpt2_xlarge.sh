#!/usr/bin/env bash
# SFT of the GPT-2 XL teacher on Dolly (MiniLLM's teacher recipe: lr 5e-5, 10 epochs, global batch 32).
# Every setting below can be set from the environment; GPUS= (empty) runs on the CPU. The other
# settings and the launch are those of the student's SFT: this script sets the teacher's recipe, then
# runs scripts/gpt2/sft_gpt2_base.sh with it.
set -eo pipefail

# the teacher's recipe
CKPT_NAME=${CKPT_NAME:-gpt2-xlarge}
BATCH_SIZE=${BATCH_SIZE:-4}
LR=${LR:-0.00005}
GRAD_ACC=${GRAD_ACC:-2}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-16}
EPOCH=${EPOCH:-10}

source "$(dirname "${BASH_SOURCE[0]}")/sft_gpt2_base.sh"
