#!/usr/bin/env bash
# The toy study of the objectives (todi.tools.study): a low-rank student fitted to fixed teacher
# distributions with each of the eight objectives and with AdaKD on FKL, RKL and ToDi.
# CPU only, a few minutes at most; writes $OUT/study.md and $OUT/study.png and prints the table.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

OUT=${OUT:-${ROOT}/outputs/study}
VOCAB=${VOCAB:-3000}
CONTEXTS=${CONTEXTS:-128}
RANK=${RANK:-12}
STEPS=${STEPS:-300}
LR=${LR:-0.05}
TEACHER_ENTROPY=${TEACHER_ENTROPY:-2.0}
SEED=${SEED:-0}
WORKERS=${WORKERS:-}   # empty: one worker process per usable CPU core

# this checkout's package, whatever is installed
export PYTHONPATH="${ROOT}/code${PYTHONPATH:+:${PYTHONPATH}}"
python3 -m todi.tools.study --out "${OUT}" --vocab "${VOCAB}" --contexts "${CONTEXTS}" --rank "${RANK}" \
    --steps "${STEPS}" --lr "${LR}" --teacher-entropy "${TEACHER_ENTROPY}" --seed "${SEED}" ${WORKERS:+--workers "${WORKERS}"}
