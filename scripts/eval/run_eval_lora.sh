#!/usr/bin/env bash
# Evaluate a LoRA adapter (merged into its base model) the papers' way: 5 seeds x the 5 sets.
#   bash scripts/eval/run_eval_lora.sh ADAPTER [BATCH]
# MODEL_PATH: the base model (default: base_model_name_or_path in ADAPTER/adapter_config.json).
# Results: ${EVAL_OUT}/<set>/seed<seed>/{answers.jsonl,metrics.json}; then `python code/report.py DIR`.
set -euo pipefail

ADAPTER=${1:?usage: bash scripts/eval/run_eval_lora.sh ADAPTER [BATCH]}
BATCH=${2:-16}
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
MODEL_PATH=${MODEL_PATH:-}
EVAL_DATA_DIR=${EVAL_DATA_DIR:-${BASE_PATH}/data}
EVAL_SETS=${EVAL_SETS:-"dolly self-inst vicuna sinst/11_ uinst/11_"}
SEEDS=${SEEDS:-"10 20 30 40 50"}
EVAL_OUT=${EVAL_OUT:-${ADAPTER}/eval}
MAX_LENGTH=${MAX_LENGTH:-512}               # prompt + answer tokens (official: 512)
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}  # answers get MAX_LENGTH - MAX_PROMPT_LENGTH tokens
NO_REPEAT_NGRAM_SIZE=${NO_REPEAT_NGRAM_SIZE:-6}
DTYPE=${DTYPE:-fp32}   # fp32: answers independent of batch size and GPU count; bf16: official, faster
GPUS=${GPUS-0,1,2,3}   # explicitly empty: CPU

if [[ ! -f ${ADAPTER}/adapter_config.json ]]; then
    echo "error: ${ADAPTER} is not a LoRA adapter directory (no adapter_config.json)" >&2
    exit 2
fi
MODEL_ARGS=(--peft lora --peft-path "${ADAPTER}")
if [[ -n ${MODEL_PATH} ]]; then
    MODEL_ARGS+=(--model-path "${MODEL_PATH}")
fi
source "${BASE_PATH}/scripts/eval/eval_sets.sh"
