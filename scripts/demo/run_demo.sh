#!/usr/bin/env bash
# The whole pipeline on a laptop CPU in a few minutes (`make demo`): builds a small instruction
# dataset, a tokenizer and tiny random GPT-2 models (python -m todi.tools.demo, no downloads), fine-tunes
# the teacher, distils the student with KD_OBJ (and trains the same student with plain SFT for
# comparison), evaluates ROUGE-L on the demo's test set and prints a table. Training goes through
# the paper's scripts (scripts/gpt2/*.sh) with environment overrides; evaluation through
# scripts/eval/run_eval.sh and code/report.py. Every setting below can be set from the environment.
# Every setting is checked before anything is built or trained. A rerun keeps earlier results: the data
# and models are reused, each run folder (one per objective: runs/student_kd_<KD_OBJ>) resumes or is
# complete already, so `KD_OBJ=forward_kl make demo` adds a row to the table; FORCE=1 starts over.
set -eo pipefail

BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
DEMO_DIR=${DEMO_DIR:-${BASE_PATH}/outputs/demo}
PYTHON=${PYTHON:-python3}
# launcher: the CPU (GPUS empty) with two processes, i.e. real data parallelism over gloo
GPUS=${GPUS-}
NPROC=${NPROC:-2}
# data and training
NUM_TRAIN=${NUM_TRAIN:-2000}
NUM_DEV=${NUM_DEV:-100}
NUM_VALID=${NUM_VALID:-100}
KD_OBJ=${KD_OBJ:-ToDi}   # any registered objective; its parameters (TODI_BETA, SKEW_LAMBDA, ADAPTIVE_KL_ALPHA,
# GJSD_BETA, AB_ALPHA, AB_BETA, OBJ_ARGS) reach scripts/gpt2/vanilla_kd_gpt2_base.sh from the environment
PLUGINS=${PLUGINS:-}     # space-separated plug-in files or modules, e.g. one that registers KD_OBJ
TEACHER_EPOCHS=${TEACHER_EPOCHS:-6}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-5}
BATCH_SIZE=${BATCH_SIZE:-16}
LR=${LR:-0.002}
PRECISION=${PRECISION:-fp32}
LOG_INTERVAL=${LOG_INTERVAL:-1000}   # optimizer steps between two training records (default: the epoch lines only)
STUDENT_SFT=${STUDENT_SFT:-1}   # 1: also train the student without a teacher, for comparison
CACHE_K=${CACHE_K:-}            # e.g. 64: also distil from a top-k teacher cache (scripts/gpt2/cache_teacher_gpt2_xlarge.sh)
CACHE_HIDDEN=${CACHE_HIDDEN:-0} # 1: also distil from a hidden-state teacher cache (exact: the live teacher's losses)
# evaluation
RUN_EVAL=${RUN_EVAL:-1}         # 0: train only
SEEDS=${SEEDS:-10}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-64}
FORCE=${FORCE:-}                # 1: delete an earlier demo in DEMO_DIR (only ever one the demo made) and start over

START=$(date +%s)
say() { echo "==> $*"; }
best_checkpoint() {  # the checkpoint a run kept (SAVE_BEST_N_CKPTS=1)
    find "$1" -maxdepth 1 -type d -name 'epoch*' | sort | tail -n 1
}

# quiet unless VERBOSE=1 (as the training and eval scripts): no library bars or accelerator notices
quiet_env=()
if [ "${VERBOSE:-0}" != 1 ]; then quiet_env=(HF_HUB_DISABLE_PROGRESS_BARS=1 DS_ACCELERATOR=cpu); fi
demo() { env "${quiet_env[@]}" PYTHONPATH="${BASE_PATH}/code${PYTHONPATH:+:${PYTHONPATH}}" "${PYTHON}" -m todi.tools.demo "$@"; }
evaluated() {  # whether every seed of the demo set has a result for the checkpoint $1
    local seed
    for seed in ${SEEDS}; do [ -f "$1/eval/demo/seed${seed}/metrics.json" ] || return 1; done
}

# every setting, before anything is built or trained (KD_OBJ through the objective registry)
(export NUM_TRAIN NUM_DEV NUM_VALID TEACHER_EPOCHS STUDENT_EPOCHS BATCH_SIZE EVAL_BATCH_SIZE NPROC LOG_INTERVAL LR PRECISION \
        STUDENT_SFT RUN_EVAL SEEDS CACHE_K CACHE_HIDDEN KD_OBJ PLUGINS FORCE && demo --check)
# the data and models: built once (reused, with every earlier run, while their settings stay the same)
say "the demo data, tokenizer and models in ${DEMO_DIR}"
demo "${DEMO_DIR}" --num-train "${NUM_TRAIN}" --num-dev "${NUM_DEV}" --num-valid "${NUM_VALID}" ${FORCE:+--force}

# what every training run shares (the paper's scripts read these from the environment)
TRAIN_ENV=(BASE_PATH="${BASE_PATH}" GPUS="${GPUS}" NPROC="${NPROC}" BATCH_SIZE="${BATCH_SIZE}" LR="${LR}"
           PRECISION="${PRECISION}" DATA_DIR="${DEMO_DIR}/data/demo" GRAD_ACC=1 EVAL_BATCH_SIZE="${EVAL_BATCH_SIZE}"
           DEV_NUM="${NUM_DEV}" EVAL_GEN_REPEAT=1 LOG_INTERVAL="${LOG_INTERVAL}" SAVE_BEST_N_CKPTS=1)

say "1/3: SFT of the teacher (${TEACHER_EPOCHS} epochs)"
env "${TRAIN_ENV[@]}" CKPT_PATH="${DEMO_DIR}/models/teacher" SAVE_PATH="${DEMO_DIR}/runs/teacher_sft" \
    EPOCH="${TEACHER_EPOCHS}" bash "${BASE_PATH}/scripts/gpt2/sft_gpt2_base.sh"
TEACHER=$(best_checkpoint "${DEMO_DIR}/runs/teacher_sft")

say "2/3: KD of the student from ${TEACHER##*/} with ${KD_OBJ} (${STUDENT_EPOCHS} epochs)"
env "${TRAIN_ENV[@]}" CKPT_PATH="${DEMO_DIR}/models/student" TEACHER_MODEL_PATH="${TEACHER}" KD_OBJ="${KD_OBJ}" \
    PLUGINS="${PLUGINS}" SAVE_PATH="${DEMO_DIR}/runs/student_kd_${KD_OBJ}" EPOCH="${STUDENT_EPOCHS}" \
    bash "${BASE_PATH}/scripts/gpt2/vanilla_kd_gpt2_base.sh"
CHECKPOINTS=("${TEACHER}" "$(best_checkpoint "${DEMO_DIR}/runs/student_kd_${KD_OBJ}")")

if [ -n "${CACHE_K}" ]; then
    say "extra: a top-${CACHE_K} cache of the teacher, and KD of the student from it (no teacher loaded)"
    env BASE_PATH="${BASE_PATH}" GPUS="${GPUS}" NPROC="${NPROC}" DATA_DIR="${DEMO_DIR}/data/demo" TOP_K="${CACHE_K}" \
        TEACHER_MODEL_PATH="${TEACHER}" CACHE_DIR="${DEMO_DIR}/cache_k${CACHE_K}" MAX_LENGTH=512 MAX_PROMPT_LENGTH=256 \
        bash "${BASE_PATH}/scripts/gpt2/cache_teacher_gpt2_xlarge.sh"
    env "${TRAIN_ENV[@]}" CKPT_PATH="${DEMO_DIR}/models/student" TEACHER_CACHE="${DEMO_DIR}/cache_k${CACHE_K}" \
        KD_OBJ="${KD_OBJ}" PLUGINS="${PLUGINS}" SAVE_PATH="${DEMO_DIR}/runs/student_kd_${KD_OBJ}_cache_k${CACHE_K}" \
        EPOCH="${STUDENT_EPOCHS}" bash "${BASE_PATH}/scripts/gpt2/vanilla_kd_gpt2_base.sh"
    CHECKPOINTS+=("$(best_checkpoint "${DEMO_DIR}/runs/student_kd_${KD_OBJ}_cache_k${CACHE_K}")")
fi

if [ "${CACHE_HIDDEN}" = 1 ]; then
    say "extra: a hidden-state cache of the teacher, and KD of the student from it (no teacher loaded)"
    env BASE_PATH="${BASE_PATH}" GPUS="${GPUS}" NPROC="${NPROC}" DATA_DIR="${DEMO_DIR}/data/demo" CACHE_MODE=hidden \
        CACHE_DTYPE="${PRECISION}" TEACHER_MODEL_PATH="${TEACHER}" CACHE_DIR="${DEMO_DIR}/cache_hidden" MAX_LENGTH=512 \
        MAX_PROMPT_LENGTH=256 bash "${BASE_PATH}/scripts/gpt2/cache_teacher_gpt2_xlarge.sh"
    env "${TRAIN_ENV[@]}" CKPT_PATH="${DEMO_DIR}/models/student" TEACHER_CACHE="${DEMO_DIR}/cache_hidden" \
        KD_OBJ="${KD_OBJ}" PLUGINS="${PLUGINS}" SAVE_PATH="${DEMO_DIR}/runs/student_kd_${KD_OBJ}_cache_hidden" \
        EPOCH="${STUDENT_EPOCHS}" bash "${BASE_PATH}/scripts/gpt2/vanilla_kd_gpt2_base.sh"
    CHECKPOINTS+=("$(best_checkpoint "${DEMO_DIR}/runs/student_kd_${KD_OBJ}_cache_hidden")")
fi

if [ "${STUDENT_SFT}" = 1 ]; then
    say "3/3: SFT of the student without a teacher, the baseline (${STUDENT_EPOCHS} epochs)"
    env "${TRAIN_ENV[@]}" CKPT_PATH="${DEMO_DIR}/models/student" SAVE_PATH="${DEMO_DIR}/runs/student_sft" \
        EPOCH="${STUDENT_EPOCHS}" bash "${BASE_PATH}/scripts/gpt2/sft_gpt2_base.sh"
    CHECKPOINTS+=("$(best_checkpoint "${DEMO_DIR}/runs/student_sft")")
fi

if [ "${RUN_EVAL}" = 1 ]; then
    for ckpt in "${CHECKPOINTS[@]}"; do
        if evaluated "${ckpt}"; then
            say "evaluated already: ${ckpt#"${DEMO_DIR}"/}"
            continue
        fi
        say "evaluating ${ckpt#"${DEMO_DIR}"/}"
        env BASE_PATH="${BASE_PATH}" GPUS="${GPUS}" NPROC="${NPROC}" EVAL_DATA_DIR="${DEMO_DIR}/data" \
            EVAL_SETS=demo SEEDS="${SEEDS}" bash "${BASE_PATH}/scripts/eval/run_eval.sh" "${ckpt}" "${EVAL_BATCH_SIZE}"
    done
    say "results (ROUGE-L on ${NUM_VALID} held-out demo instructions)"
    "${PYTHON}" "${BASE_PATH}/code/report.py" "${DEMO_DIR}/runs"
fi
say "demo finished in $(( $(date +%s) - START ))s; everything is in ${DEMO_DIR}"
