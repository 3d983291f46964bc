#!/usr/bin/env bash
# SFT (LoRA) of the Qwen2.5-7B teacher on Dolly, with the TinyLLaMA recipe of the ToDi paper
# (LoRA r 256 / alpha 8 / dropout 0.1, lr 1e-3, 10 epochs). Every setting below can be set from the
# environment; GPUS= (empty) runs on the CPU with NPROC processes.
# Qwen2.5 base models end with <|endoftext|> (151643), forced as EOS and pad as in the official code;
# the 7B's output layer has 152,064 rows, the 0.5B's 151,936, the tokenizer 151,665: KD compares
# the first 151,665 (padding rows left out; todi.models.shared_vocab_size).
# The recipe (every other setting, the launch) is the TinyLLaMA pair's: this script only names
# the qwen2.5 models, then runs scripts/tinyllama/sft_teacher_llama2.sh with them.
set -eo pipefail

# the models
CKPT_TYPE=${CKPT_TYPE:-qwen2.5}
CKPT_NAME=${CKPT_NAME:-qwen2.5-7b}

source "$(dirname "${BASH_SOURCE[0]}")/../tinyllama/sft_teacher_llama2.sh"
