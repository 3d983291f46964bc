#!/usr/bin/env bash
# Evaluate one checkpoint the papers' way: 5 sampling seeds x Dolly, SelfInst, Vicuna, S-NI, UnNI.
#   bash scripts/eval/run_eval.sh CKPT [BATCH]
# Results: ${EVAL_OUT}/<set>/seed<seed>/{answers.jsonl,metrics.json}; then `python code/report.py DIR`.
# Every setting below can be overridden from the environment, e.g. GPUS= NPROC=2 for 2 CPU ranks.
set -euo pipefail

CKPT=${1:?usage: bash scripts/eval/run_eval.sh CKPT [BATCH]}
BATCH=${2:-32}
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
EVAL_DATA_DIR=${EVAL_DATA_DIR:-${BASE_PATH}/data}
EVAL_SETS=${EVAL_SETS:-"dolly self-inst vicuna sinst/11_ uinst/11_"}
SEEDS=${SEEDS:-"10 20 30 40 50"}
EVAL_OUT=${EVAL_OUT:-${CKPT}/eval}
MAX_LENGTH=${MAX_LENGTH:-512}               # prompt + answer tokens (official: 512)
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}  # answers get MAX_LENGTH - MAX_PROMPT_LENGTH tokens
NO_REPEAT_NGRAM_SIZE=${NO_REPEAT_NGRAM_SIZE:-6}
DTYPE=${DTYPE:-fp32}   # fp32: answers independent of batch size and GPU count; bf16: official, faster
GPUS=${GPUS-0,1,2,3}   # explicitly empty: CPU

if [[ ! -d ${CKPT} ]]; then
    echo "error: checkpoint directory ${CKPT} not found" >&2
    exit 2
fi
if [[ -f ${CKPT}/adapter_config.json && ! -f ${CKPT}/config.json ]]; then
    echo "error: ${CKPT} is a LoRA adapter; evaluate it with scripts/eval/run_eval_lora.sh" >&2
    exit 2
fi
MODEL_ARGS=(--model-path "${CKPT}")
source "${BASE_PATH}/scripts/eval/eval_sets.sh"
