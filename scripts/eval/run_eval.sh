#!/usr/bin/env bash
# Evaluate one checkpoint the papers' way: 5 sampling seeds x Dolly, SelfInst, Vicuna, S-NI, UnNI.
#   bash scripts/eval/run_eval.sh CKPT [BATCH]
# Results: ${EVAL_OUT}/<set>/seed<seed>/{answers.jsonl,metrics.json}; then `python code/report.py DIR`.
# Every setting (below, and the protocol's in eval_sets.sh) can be set from the environment, e.g. GPUS= NPROC=2,
# or BACKEND=vllm (the same answers, token-identical in fp32, at vLLM's speed; docs/evaluation.md).
set -euo pipefail

CKPT=${1:?usage: bash scripts/eval/run_eval.sh CKPT [BATCH]}
BATCH=${2:-32}
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
EVAL_OUT=${EVAL_OUT:-${CKPT}/eval}

if [[ ! -d ${CKPT} ]]; then
    echo "error: checkpoint directory ${CKPT} not found" >&2
    exit 2
fi
if [[ -f ${CKPT}/adapter_config.json && ! -f ${CKPT}/config.json ]]; then
    echo "error: ${CKPT} is a LoRA adapter; evaluate it with scripts/eval/run_eval_lora.sh" >&2
    exit 2
fi
if [[ ! -f ${CKPT}/config.json ]]; then   # not a model: say what it is (a run folder: its checkpoints, best first)
    python3 "${BASE_PATH}/code/evaluate.py" --model-path "${CKPT}" --check-model
    exit 2
fi
MODEL_ARGS=(--model-path "${CKPT}")
source "${BASE_PATH}/scripts/eval/eval_sets.sh"
