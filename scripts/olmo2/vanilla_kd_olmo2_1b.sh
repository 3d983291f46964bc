#!/usr/bin/env bash
# KD of OLMo-2-0425-1B (LoRA) from a LoRA-fine-tuned OLMo-2-1124-7B teacher on Dolly, with the divergence
# KD_OBJ, any registered objective with its parameters and plug-ins as in
# scripts/gpt2/vanilla_kd_gpt2_base.sh; the ToDi paper's settings. Every setting below can be set from
# the environment; GPUS= (empty) runs on the CPU with NPROC processes. The TinyLLaMA recipe's settings.
# OLMo 2: pad = EOS <|endoftext|> (100257) as in the official code; 100,352 output rows for the
# 100,278-token dolma2 tokenizer: KD compares the first 100,278 (padding rows left out).
# The recipe (every other setting, the launch) is the TinyLLaMA pair's: this script only names
# the olmo2 models, then runs scripts/tinyllama/vanilla_kd_tinyllama.sh with them.
set -eo pipefail

# the models
CKPT_TYPE=${CKPT_TYPE:-olmo2}
CKPT_NAME=${CKPT_NAME:-olmo-2-0425-1b}
TEACHER_MODEL_TYPE=${TEACHER_MODEL_TYPE:-olmo2}
TEACHER_MODEL_NAME=${TEACHER_MODEL_NAME:-olmo-2-1124-7b}

source "$(dirname "${BASH_SOURCE[0]}")/../tinyllama/vanilla_kd_tinyllama.sh"
