#!/usr/bin/env bash
# AdaKD (AAAI 2026) for TinyLLaMA-1.1B (LoRA) from a LoRA-fine-tuned Llama-2-7B on Dolly. AdaKD released
# no TinyLLaMA script: this is the ToDi paper's TinyLLaMA KD recipe (vanilla_kd_tinyllama.sh) with
# AdaKD's loss settings from its GPT-2 recipe: pure KD (kd ratio 1.0), temperature 1.0, Hellinger
# difficulty, IDTS c 0.5, LATF eps 0.05 / delta 0.05, warm-up 0.05, min ratio 0.1, and the divergence
# KD_OBJ (default reverse_kl). Every setting of vanilla_kd_tinyllama.sh (and the ADAKD_* ones) can be
# set from the environment.
set -eo pipefail

# AdaKD's loss settings
TASK=${TASK:-adakd}
KD_RATE=${KD_RATE:-1.0}
KD_TEMP=${KD_TEMP:-1.0}
KD_OBJ=${KD_OBJ:-reverse_kl}
ADAKD=${ADAKD:-1}

source "$(dirname "${BASH_SOURCE[0]}")/vanilla_kd_tinyllama.sh"
