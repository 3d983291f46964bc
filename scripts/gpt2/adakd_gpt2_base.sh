#!/usr/bin/env bash
# AdaKD (AAAI 2026) for GPT-2 base from GPT-2 XL on Dolly with AdaKD's released recipe
# (scripts/gpt2/AdaKD/AdaKD.sh of github.com/SassyRong/AdaKD): pure KD (kd ratio 1.0), temperature 1.0,
# batch 32 per GPU x 4 GPUs without accumulation, lr 5e-4 cosine, 20 epochs, max length 512 / prompt
# 256, gradient checkpointing, Hellinger difficulty, IDTS c 0.5, LATF eps 0.05 / delta 0.05, warm-up
# 0.05, min ratio 0.1, and the divergence KD_OBJ (default reverse_kl, AdaKD.sh's "rkd"; any registered
# objective works, with its parameters as in vanilla_kd_gpt2_base.sh). The teacher is MiniLLM's
# released GPT-2 XL fine-tuned on Dolly (MODELS=teacher-gpt2-1.5B bash scripts/download_models.sh), the
# paper's; a checkpoint of sft_teacher_gpt2_xlarge.sh is the alternative (TEACHER_MODEL_PATH=...). One
# difference: AdaKD warms the learning rate up over 5% of the steps; scripts/train_launch.sh passes
# --warmup-iters 0. This script sets AdaKD's defaults and runs vanilla_kd_gpt2_base.sh with ADAKD=1;
# every setting of that script (and the ADAKD_* ones) can be set from the environment.
set -eo pipefail

# AdaKD's recipe
TASK=${TASK:-adakd}
BATCH_SIZE=${BATCH_SIZE:-32}
GRAD_ACC=${GRAD_ACC:-1}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-128}
KD_RATE=${KD_RATE:-1.0}
KD_TEMP=${KD_TEMP:-1.0}
KD_OBJ=${KD_OBJ:-reverse_kl}
ADAKD=${ADAKD:-1}
EXTRA_OPTS=${EXTRA_OPTS:---gradient-checkpointing}

source "$(dirname "${BASH_SOURCE[0]}")/vanilla_kd_gpt2_base.sh"
