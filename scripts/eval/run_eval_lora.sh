#!/usr/bin/env bash
# Evaluate a LoRA adapter (merged into its base model) the papers' way: 5 seeds x the 5 sets.
#   bash scripts/eval/run_eval_lora.sh ADAPTER [BATCH]
# MODEL_PATH: the base model (default: base_model_name_or_path in ADAPTER/adapter_config.json).
# Results: ${EVAL_OUT}/<set>/seed<seed>/{answers.jsonl,metrics.json}; the protocol's settings: eval_sets.sh
# (BACKEND=vllm: the adapter merged into its base in a temporary folder, then vLLM; the same answers in fp32).
set -euo pipefail

ADAPTER=${1:?usage: bash scripts/eval/run_eval_lora.sh ADAPTER [BATCH]}
BATCH=${2:-16}
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
MODEL_PATH=${MODEL_PATH:-}
EVAL_OUT=${EVAL_OUT:-${ADAPTER}/eval}

if [[ ! -f ${ADAPTER}/adapter_config.json ]]; then   # say what it is (a run folder: its checkpoints, best first)
    python3 "${BASE_PATH}/code/evaluate.py" --peft-path "${ADAPTER}" --check-model
    exit 2
fi
MODEL_ARGS=(--peft lora --peft-path "${ADAPTER}")
if [[ -n ${MODEL_PATH} ]]; then
    MODEL_ARGS+=(--model-path "${MODEL_PATH}")
fi
source "${BASE_PATH}/scripts/eval/eval_sets.sh"
