#!/usr/bin/env bash
# Pairwise LLM-as-a-judge comparison of two evaluated checkpoints (the papers' GPT-4 evaluation).
#   bash scripts/eval/run_judge.sh CKPT_A CKPT_B [OUT_DIR]
# Both checkpoints must have been evaluated first (scripts/eval/run_eval.sh): every set they share is
# judged, each example in both orders, on the seed SEED (default: the smallest common one).
# Results: ${OUT_DIR}/judge.{md,csv,png} and verdicts.jsonl; verdicts cached in ${OUT_DIR}/cache.
# Every setting below can be overridden from the environment; JUDGE_OPTS takes any other flag of
# code/judge.py (python code/judge.py --help), e.g. JUDGE_OPTS="--dry-run".
set -euo pipefail

CKPT_A=${1:?usage: bash scripts/eval/run_judge.sh CKPT_A CKPT_B [OUT_DIR]}
CKPT_B=${2:?usage: bash scripts/eval/run_judge.sh CKPT_A CKPT_B [OUT_DIR]}
BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
OUT_DIR=${3:-${BASE_PATH}/outputs/judge/$(basename "${CKPT_A}")__vs__$(basename "${CKPT_B}")}
JUDGE_MODEL=${JUDGE_MODEL:-gpt-4}
OPENAI_BASE_URL=${OPENAI_BASE_URL:-}   # empty: api.openai.com; e.g. http://localhost:8000/v1 for a local server
EVAL_SETS=${EVAL_SETS:-}               # empty: every set both checkpoints answered
SEED=${SEED:-}                         # empty: the smallest seed both have, per set
MAX_EXAMPLES=${MAX_EXAMPLES:-}         # empty: every example
WORKERS=${WORKERS:-4}
MAX_RETRIES=${MAX_RETRIES:-6}
JUDGE_OPTS=${JUDGE_OPTS:-}
PYTHON=${PYTHON:-python3}

ARGS=("${CKPT_A}" "${CKPT_B}" --out-dir "${OUT_DIR}" --model "${JUDGE_MODEL}"
      --workers "${WORKERS}" --max-retries "${MAX_RETRIES}")
if [[ -n ${OPENAI_BASE_URL} ]]; then ARGS+=(--base-url "${OPENAI_BASE_URL}"); fi
# shellcheck disable=SC2206  # EVAL_SETS is a list
if [[ -n ${EVAL_SETS} ]]; then ARGS+=(--sets ${EVAL_SETS}); fi
if [[ -n ${SEED} ]]; then ARGS+=(--seed "${SEED}"); fi
if [[ -n ${MAX_EXAMPLES} ]]; then ARGS+=(--max-examples "${MAX_EXAMPLES}"); fi
export PYTHONIOENCODING=utf-8

# shellcheck disable=SC2086  # JUDGE_OPTS is a list of flags
exec "${PYTHON}" "${BASE_PATH}/code/judge.py" "${ARGS[@]}" ${JUDGE_OPTS}
