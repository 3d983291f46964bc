#!/usr/bin/env bash
# SFT (LoRA) of the Gemma-3-4B (multimodal checkpoint, loaded text-only) teacher on Dolly, with the TinyLLaMA recipe of the ToDi paper
# (LoRA r 256 / alpha 8 / dropout 0.1, lr 1e-3, 10 epochs). Every setting below can be set from the
# environment; GPUS= (empty) runs on the CPU with NPROC processes.
# Gemma 3: EOS <eos> (1, what the -pt models end with), pad = EOS, generation also stops at
# <end_of_turn> (106), <bos> before every prompt. The 4B checkpoint is multimodal: it loads as its
# text-only Gemma3ForCausalLM (262,208 rows); the 1B has 262,144, the tokenizer 262,145: KD compares
# the first 262,144 (<image_soft_token> left out with a log line). 262k-entry logits are large:
# lower BATCH_SIZE (raise GRAD_ACC) if memory runs out.
# The recipe (every other setting, the launch) is the TinyLLaMA pair's: this script only names
# the gemma3 models, then runs scripts/tinyllama/sft_teacher_llama2.sh with them.
set -eo pipefail

# the models
CKPT_TYPE=${CKPT_TYPE:-gemma3}
CKPT_NAME=${CKPT_NAME:-gemma-3-4b-pt}

source "$(dirname "${BASH_SOURCE[0]}")/../tinyllama/sft_teacher_llama2.sh"
