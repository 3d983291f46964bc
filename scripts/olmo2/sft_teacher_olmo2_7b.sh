#!/usr/bin/env bash
# SFT (LoRA) of the OLMo-2-1124-7B teacher on Dolly, with the TinyLLaMA recipe of the ToDi paper
# (LoRA r 256 / alpha 8 / dropout 0.1, lr 1e-3, 10 epochs). Every setting below can be set from the
# environment; GPUS= (empty) runs on the CPU with NPROC processes.
# OLMo 2: pad = EOS <|endoftext|> (100257) as in the official code; 100,352 output rows for the
# 100,278-token dolma2 tokenizer: KD compares the first 100,278 (padding rows left out).
# The recipe (every other setting, the launch) is the TinyLLaMA pair's: this script only names
# the olmo2 models, then runs scripts/tinyllama/sft_teacher_llama2.sh with them.
set -eo pipefail

# the models
CKPT_TYPE=${CKPT_TYPE:-olmo2}
CKPT_NAME=${CKPT_NAME:-olmo-2-1124-7b}

source "$(dirname "${BASH_SOURCE[0]}")/../tinyllama/sft_teacher_llama2.sh"
