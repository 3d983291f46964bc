#!/usr/bin/env bash
# KD of Gemma-3-1B (LoRA) from a LoRA-fine-tuned Gemma-3-4B (multimodal checkpoint, loaded text-only) teacher on Dolly, with the divergence
# KD_OBJ, any registered objective with its parameters and plug-ins as in
# scripts/gpt2/vanilla_kd_gpt2_base.sh; the ToDi paper's settings. Every setting below can be set from
# the environment; GPUS= (empty) runs on the CPU with NPROC processes. The TinyLLaMA recipe's settings.
# Gemma 3: EOS <eos> (1, what the -pt models end with), pad = EOS, generation also stops at
# <end_of_turn> (106), <bos> before every prompt. The 4B checkpoint is multimodal: it loads as its
# text-only Gemma3ForCausalLM (262,208 rows); the 1B has 262,144, the tokenizer 262,145: KD compares
# the first 262,144 (<image_soft_token> left out with a log line). 262k-entry logits are large:
# lower BATCH_SIZE (raise GRAD_ACC) if memory runs out.
# The recipe (every other setting, the launch) is the TinyLLaMA pair's: this script only names
# the gemma3 models, then runs scripts/tinyllama/vanilla_kd_tinyllama.sh with them.
set -eo pipefail

# the models
CKPT_TYPE=${CKPT_TYPE:-gemma3}
CKPT_NAME=${CKPT_NAME:-gemma-3-1b-pt}
TEACHER_MODEL_TYPE=${TEACHER_MODEL_TYPE:-gemma3}
TEACHER_MODEL_NAME=${TEACHER_MODEL_NAME:-gemma-3-4b-pt}

source "$(dirname "${BASH_SOURCE[0]}")/../tinyllama/vanilla_kd_tinyllama.sh"
