#!/usr/bin/env bash
# Throughput of a KD epoch (or STEPS optimizer steps): this project's loop in the official style
# (padding to MAX_LENGTH, reference loss) and by default (dynamic padding, memory-efficient loss),
# optionally with length-grouped batches and CE-only (MODES="official-style default grouped sft"),
# and the official ToDi/DSKD loop when OFFICIAL_DIR points to a checkout of it. Paper shapes by
# default: GPT-2 base student, GPT-2 XL teacher (random weights from configs given by path +
# overrides), real Dolly training lines, batch 8, bf16, ZeRO-1. Prints examples/s, tokens/s, peak
# GPU memory and the speed-ups.
# Every setting below can be set from the environment; on a CPU (GPUS=) use tiny overrides, e.g.
#   GPUS= STUDENT_OVERRIDES=n_layer=1,n_embd=32,n_head=2 TEACHER_OVERRIDES=n_layer=1,n_embd=48,n_head=2 \
#   STEPS=4 WARMUP=2 BATCH_SIZE=2 MAX_LENGTH=128 MAX_PROMPT_LENGTH=64 bash scripts/bench/bench_epoch.sh
set -eo pipefail

BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PYTHON=${PYTHON:-python3}
GPUS=${GPUS-0}
NPROC=${NPROC:-$(if [ -n "${GPUS}" ]; then echo "${GPUS}" | tr ',' '\n' | grep -c .; else echo 1; fi)}
MASTER_PORT=${MASTER_PORT:-$(python3 -c "import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])")}   # a free port; set it for multi-node
# models: a directory with config.json and the tokenizer, plus config overrides (GPT-2 XL by default)
STUDENT_CONFIG=${STUDENT_CONFIG:-${BASE_PATH}/model_hub/gpt2/gpt2-base}
STUDENT_OVERRIDES=${STUDENT_OVERRIDES:-}
TEACHER_CONFIG=${TEACHER_CONFIG:-${STUDENT_CONFIG}}
TEACHER_OVERRIDES=${TEACHER_OVERRIDES:-n_layer=48,n_embd=1600,n_head=25}   # "none": TEACHER_CONFIG as it is
# data and schedule
DATA=${DATA:-${BASE_PATH}/data/dolly/train.jsonl}
STEPS=${STEPS:-100}   # timed optimizer steps; 0: a whole epoch
WARMUP=${WARMUP:-10}
BATCH_SIZE=${BATCH_SIZE:-8}
GRAD_ACC=${GRAD_ACC:-1}
MAX_LENGTH=${MAX_LENGTH:-512}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}
KD_OBJ=${KD_OBJ:-ToDi}
PRECISION=${PRECISION:-$(if [ -n "${GPUS}" ]; then echo bf16; else echo fp32; fi)}
ZERO_STAGE=${ZERO_STAGE:-1}
DS_CONFIG=${DS_CONFIG:-${BASE_PATH}/configs/deepspeed/ds_config_zero${ZERO_STAGE}_${PRECISION}.json}
MODES=${MODES:-official-style default}
OFFICIAL_DIR=${OFFICIAL_DIR:-}
OUT_DIR=${OUT_DIR:-${BASE_PATH}/outputs/bench}
EXTRA_OPTS=${EXTRA_OPTS:-}   # more flags for this project's runs, e.g. "--compile"

export CUDA_VISIBLE_DEVICES=${GPUS}
export TOKENIZERS_PARALLELISM=false
mkdir -p "${OUT_DIR}"
# shellcheck disable=SC2086
"${PYTHON}" "${BASE_PATH}/scripts/bench/bench_epoch.py" \
    --student-config "${STUDENT_CONFIG}" --student-overrides "${STUDENT_OVERRIDES}" \
    --teacher-config "${TEACHER_CONFIG}" --teacher-overrides "${TEACHER_OVERRIDES}" \
    --data "${DATA}" --out "${OUT_DIR}" --steps "${STEPS}" --warmup "${WARMUP}" \
    --batch-size "${BATCH_SIZE}" --grad-acc "${GRAD_ACC}" --max-length "${MAX_LENGTH}" \
    --max-prompt-length "${MAX_PROMPT_LENGTH}" --kd-obj "${KD_OBJ}" --ds-config "${DS_CONFIG}" \
    --modes "${MODES}" --official-dir "${OFFICIAL_DIR}" --nproc "${NPROC}" --master-port "${MASTER_PORT}" \
    -- ${EXTRA_OPTS} 2>&1 | tee "${OUT_DIR}/bench.log"
