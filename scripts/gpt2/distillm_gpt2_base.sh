#!/usr/bin/env bash
# DistiLLM (Ko et al., ICML 2024) for GPT-2 base from GPT-2 XL on Dolly with its released GPT-2 settings
# (scripts/gpt2/distillm/train_0.1B_1.5B.sh of github.com/jongwooko/distillm): the skewed KL at
# lambda 0.1, pure KD (kd ratio 1.0), no temperature, and its adaptive off-policy schedule: a threshold
# tau from INIT_THRESHOLD (0.0) that grows by 0.1 when the dev loss rises by LOSS_EPS (0.1), a
# replay buffer of REPLAY_CAPACITY (1,000) sampled responses, rho = tau * (1 - step / T); batch 8, lr
# 5e-4 cosine, 20 epochs, 512 / 256; sampling at temperature 1, top-k 0, top-p 1. KD_OBJ switches the
# divergence (ToDi, reverse_kl, ...; ADAKD=1 adds AdaKD). Differences from their code (README
# "differences"): one draw per optimizer step shared by every rank, one buffer shared by every rank,
# correct label alignment on sampled responses with EOS kept, no OpenWebText LM loss. Every setting of
# vanilla_kd_gpt2_base.sh can be set from the environment.
set -eo pipefail

TASK=${TASK:-distillm}
DATA_MODE=${DATA_MODE:-distillm}
BATCH_SIZE=${BATCH_SIZE:-8}
GRAD_ACC=${GRAD_ACC:-1}
KD_RATE=${KD_RATE:-1.0}
KD_TEMP=${KD_TEMP:-1.0}
KD_OBJ=${KD_OBJ:-skewed_forward_kl}
if [ "${KD_OBJ}" = skewed_forward_kl ]; then SKEW_LAMBDA=${SKEW_LAMBDA:-0.1}; fi

source "$(dirname "${BASH_SOURCE[0]}")/vanilla_kd_gpt2_base.sh"
