#!/usr/bin/env bash
# KD of Qwen2.5-0.5B (LoRA) from a LoRA-fine-tuned Qwen2.5-7B teacher on Dolly, with the divergence
# KD_OBJ, any registered objective with its parameters and plug-ins as in
# scripts/gpt2/vanilla_kd_gpt2_base.sh; the ToDi paper's settings. Every setting below can be set from
# the environment; GPUS= (empty) runs on the CPU with NPROC processes. The TinyLLaMA recipe's settings.
# Qwen2.5 base models end with <|endoftext|> (151643), forced as EOS and pad as in the official code;
# the 7B's output layer has 152,064 rows, the 0.5B's 151,936, the tokenizer 151,665: KD compares
# the first 151,665 (padding rows left out; todi.models.shared_vocab_size).
# The recipe (every other setting, the launch) is the TinyLLaMA pair's: this script only names
# the qwen2.5 models, then runs scripts/tinyllama/vanilla_kd_tinyllama.sh with them.
set -eo pipefail

# the models
CKPT_TYPE=${CKPT_TYPE:-qwen2.5}
CKPT_NAME=${CKPT_NAME:-qwen2.5-0.5b}
TEACHER_MODEL_TYPE=${TEACHER_MODEL_TYPE:-qwen2.5}
TEACHER_MODEL_NAME=${TEACHER_MODEL_NAME:-qwen2.5-7b}

source "$(dirname "${BASH_SOURCE[0]}")/../tinyllama/vanilla_kd_tinyllama.sh"
