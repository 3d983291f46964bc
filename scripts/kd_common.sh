# Sourced by the KD scripts (gpt2/vanilla_kd_gpt2_base.sh, tinyllama/vanilla_kd_tinyllama.sh) right after
# their GPUS, before their recipe: train_common.sh, then what every KD run shares: a teacher cache to
# distil from, extra objective flags, and AdaKD (AAAI 2026) around the objective with AdaKD's released
# settings. Every setting can be set from the environment. Also the teacher's part of a KD run's folder
# name (teacher_name, below).
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/train_common.sh"

# KD
TEACHER_CACHE=${TEACHER_CACHE:-}             # a teacher cache (scripts/*/cache_teacher_*.sh): distil from it, no teacher loaded
OBJ_ARGS=${OBJ_ARGS:-}                       # other objective flags, verbatim, e.g. a plug-in objective's "--scaled-gamma 2"
ADAKD=${ADAKD:-0}                              # 1: AdaKD around KD_OBJ (token focusing + per-token temperatures), with:
ADAKD_C=${ADAKD_C:-0.5}                        # IDTS: tau = KD_TEMP * exp(-c * tanh(log(score / median)))
ADAKD_EMA=${ADAKD_EMA:-0.99}                   # LATF: EMA decay of the loss trend
ADAKD_EPS=${ADAKD_EPS:-0.05}                   # LATF: loss-ratio threshold (AdaKD's --loss-ratio-eps)
ADAKD_DELTA=${ADAKD_DELTA:-0.05}               # LATF: step of the focused-token ratio (AdaKD's --sample-ratio-eps)
ADAKD_WARMUP=${ADAKD_WARMUP:-0.05}             # fraction of the optimizer steps before LATF adapts
ADAKD_MIN_RATIO=${ADAKD_MIN_RATIO:-0.1}        # LATF: the smallest ratio of tokens kept for KD
ADAKD_DIFFICULTY=${ADAKD_DIFFICULTY:-hellinger}   # token difficulty (AdaKD's --rule)
ADAKD_TAG=${ADAKD_TAG:-$(if [ "${ADAKD}" = 1 ]; then echo "__adakd^c=${ADAKD_C}^eps=${ADAKD_EPS}^delta=${ADAKD_DELTA}^${ADAKD_DIFFICULTY}"; fi)}
# on-policy data: which source each step trains on (code/todi/training/onpolicy.py)
DATA_MODE=${DATA_MODE:-fixed}                  # fixed: the dataset; gkd: GKD's mix; distillm: DistiLLM's adaptive schedule
STUDENT_GEN_RATIO=${STUDENT_GEN_RATIO:-0.5}    # gkd: lambda, the probability of a step on the student's own samples
SEQ_KD=${SEQ_KD:-0}                            # gkd: 1: the other steps train on the teacher's samples
INIT_THRESHOLD=${INIT_THRESHOLD:-0.0}          # distillm: the starting threshold tau
LOSS_EPS=${LOSS_EPS:-0.1}                      # distillm: tau grows by 0.1 when a dev loss rises by this much
REPLAY_CAPACITY=${REPLAY_CAPACITY:-1000}       # distillm: sampled responses the replay buffer keeps
ROLLOUT_MAX_NEW_TOKENS=${ROLLOUT_MAX_NEW_TOKENS:-}   # empty: MAX_LENGTH - MAX_PROMPT_LENGTH
ROLLOUT_TEMP=${ROLLOUT_TEMP:-1.0}              # rollouts sample the full distribution by default (GKD's, DistiLLM's)
ROLLOUT_TOP_K=${ROLLOUT_TOP_K:-0}
ROLLOUT_TOP_P=${ROLLOUT_TOP_P:-1.0}
ROLLOUT_BACKEND=${ROLLOUT_BACKEND:-hf}         # vllm: a vLLM engine on each rank samples the student (pip install -e '.[vllm]')
ROLLOUT_SYNC_INTERVAL=${ROLLOUT_SYNC_INTERVAL:-1}   # vllm: push the training weights when the engine's are this many steps old
DATA_TAG=${DATA_TAG:-$(case "${DATA_MODE}" in
    gkd) echo "__data=gkd^${STUDENT_GEN_RATIO}$([ "${SEQ_KD}" = 1 ] && echo "^seqkd")";;
    distillm) echo "__data=distillm^${INIT_THRESHOLD}^${LOSS_EPS}^${REPLAY_CAPACITY}";;
esac)$(if [ "${DATA_MODE}" != fixed ] && [ "${ROLLOUT_SYNC_INTERVAL}" != 1 ]; then echo "^sync${ROLLOUT_SYNC_INTERVAL}"; fi)}

# The teacher in the run's folder name: teacher_name MODEL_PATH [ADAPTER_PATH] gives the model folder's
# name (+ the LoRA adapter's), or with TEACHER_CACHE the cache folder's name (such a run's name also
# ends with __cache: cached and live runs never share a folder).
teacher_name() {
    if [ -n "${TEACHER_CACHE}" ]; then
        basename "${TEACHER_CACHE}"
    else
        printf '%s%s' "$(basename "$1")" "${2:++$(basename "$2")}"
    fi
}
