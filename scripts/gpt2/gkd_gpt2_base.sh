#!/usr/bin/env bash
# GKD (Agarwal et al., ICLR 2024) for GPT-2 base from GPT-2 XL on Dolly with the GPT-2 settings
# DistiLLM released for it (scripts/gpt2/gkd/gkd_base.sh of github.com/jongwooko/distillm): each step
# trains with probability STUDENT_GEN_RATIO (lambda, 0.5) on the student's own sampled responses to the
# batch's prompts (full-vocabulary sampling: temperature 1, top-k 0, top-p 1, up to MAX_LENGTH -
# MAX_PROMPT_LENGTH new tokens), else on the dataset's; pure KD (kd ratio 1.0) with the generalized JSD
# at beta 0.1 (their "jsd": mixture 0.1 teacher + 0.9 student), no temperature, lr 5e-4 cosine,
# 20 epochs, 512 / 256. KD_OBJ switches the divergence (ToDi, reverse_kl, ... with AdaKD too: ADAKD=1).
# Differences from their code (README "differences"): one draw per optimizer step shared by every rank
# (theirs: per micro-batch and rank), rollouts trained directly (theirs pass them through a replay
# buffer), EOS kept as a target. Every setting of vanilla_kd_gpt2_base.sh can be set from the environment.
set -eo pipefail

TASK=${TASK:-gkd}
DATA_MODE=${DATA_MODE:-gkd}
STUDENT_GEN_RATIO=${STUDENT_GEN_RATIO:-0.5}
KD_RATE=${KD_RATE:-1.0}
KD_TEMP=${KD_TEMP:-1.0}
KD_OBJ=${KD_OBJ:-generalized_jsd}
if [ "${KD_OBJ}" = generalized_jsd ]; then GJSD_BETA=${GJSD_BETA:-0.1}; fi

source "$(dirname "${BASH_SOURCE[0]}")/vanilla_kd_gpt2_base.sh"
