#!/usr/bin/env bash
# On-policy study on the demo task: the student distilled from the demo's teacher with DATA_MODE fixed
# (off-policy), gkd and distillm, for each objective in OBJECTIVES; ROUGE-L on the demo's held-out set,
# mean ± std over the sampling SEEDS, in one table (code/report.py). Needs the demo's data and teacher:
# run `make demo` first (RUN_EVAL=0 STUDENT_SFT=0 make demo is enough). CPU, 2 processes, like the demo.
# DistiLLM starts from INIT_THRESHOLD (the released 0.0 keeps a run on the dataset until its dev loss
# rises by 0.1, which the demo's short runs rarely see; the study's default 0.3 makes it act).
set -eo pipefail

BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
DEMO_DIR=${DEMO_DIR:-${BASE_PATH}/outputs/demo}
STUDY_DIR=${STUDY_DIR:-${DEMO_DIR}/onpolicy_study}
OBJECTIVES=${OBJECTIVES:-ToDi forward_kl reverse_kl}
MODES=${MODES:-fixed gkd distillm}
STUDENT_GEN_RATIO=${STUDENT_GEN_RATIO:-0.5}
INIT_THRESHOLD=${INIT_THRESHOLD:-0.3}
ROLLOUT_MAX_NEW_TOKENS=${ROLLOUT_MAX_NEW_TOKENS:-48}   # the demo's answers are short
EPOCH=${EPOCH:-5}
SEEDS=${SEEDS:-10 20 30}   # sampling seeds of the evaluation
GPUS=${GPUS-}
NPROC=${NPROC:-2}

TEACHER=$(find "${DEMO_DIR}/runs/teacher_sft" -maxdepth 1 -type d -name 'epoch*' 2>/dev/null | sort | tail -n 1)
if [ -z "${TEACHER}" ] || [ ! -d "${DEMO_DIR}/models/student" ]; then
    echo "no demo teacher in ${DEMO_DIR}: run \`make demo\` first (RUN_EVAL=0 STUDENT_SFT=0 make demo is enough)" >&2
    exit 2
fi
for objective in ${OBJECTIVES}; do
    for mode in ${MODES}; do
        run="${STUDY_DIR}/runs/${objective}_${mode}"
        echo "==> ${objective}, data mode ${mode}"
        env BASE_PATH="${BASE_PATH}" GPUS="${GPUS}" NPROC="${NPROC}" DATA_DIR="${DEMO_DIR}/data/demo" BATCH_SIZE=16 \
            GRAD_ACC=1 LR=0.002 PRECISION=fp32 EVAL_BATCH_SIZE=64 DEV_NUM=100 EVAL_GEN_REPEAT=1 LOG_INTERVAL=50 \
            SAVE_BEST_N_CKPTS=1 CKPT_PATH="${DEMO_DIR}/models/student" TEACHER_MODEL_PATH="${TEACHER}" \
            KD_OBJ="${objective}" DATA_MODE="${mode}" STUDENT_GEN_RATIO="${STUDENT_GEN_RATIO}" \
            INIT_THRESHOLD="${INIT_THRESHOLD}" ROLLOUT_MAX_NEW_TOKENS="${ROLLOUT_MAX_NEW_TOKENS}" EPOCH="${EPOCH}" \
            SAVE_PATH="${run}" bash "${BASE_PATH}/scripts/gpt2/vanilla_kd_gpt2_base.sh"
        best=$(find "${run}" -maxdepth 1 -type d -name 'epoch*' | sort | tail -n 1)
        env BASE_PATH="${BASE_PATH}" GPUS="${GPUS}" NPROC="${NPROC}" EVAL_DATA_DIR="${DEMO_DIR}/data" EVAL_SETS=demo \
            SEEDS="${SEEDS}" bash "${BASE_PATH}/scripts/eval/run_eval.sh" "${best}" 64
    done
done
python3 "${BASE_PATH}/code/report.py" "${STUDY_DIR}/runs"
