# Sourced by the teacher-cache scripts (gpt2/cache_teacher_*.sh, tinyllama/cache_teacher_*.sh) once
# their settings are made: one pass of the teacher over the training split into CACHE_DIR under
# torchrun, every rank writing its own parts; rerun the same command to finish an interrupted build.
# shellcheck shell=bash disable=SC2154   # the variables come from the sourcing script
OPTS=""
OPTS+=" --teacher-model-path ${TEACHER_MODEL_PATH}"
if [ -n "${TEACHER_PEFT_PATH:-}" ]; then
    OPTS+=" --teacher-peft-path ${TEACHER_PEFT_PATH}"
fi
OPTS+=" --data-dir ${DATA_DIR}"
OPTS+=" --out ${CACHE_DIR}"
OPTS+=" --top-k ${TOP_K}"
OPTS+=" --kd-temperature ${KD_TEMP}"
OPTS+=" --max-length ${MAX_LENGTH}"
OPTS+=" --max-prompt-length ${MAX_PROMPT_LENGTH}"
OPTS+=" --dtype ${CACHE_DTYPE}"
OPTS+=" --batch-size ${BATCH_SIZE}"
OPTS+=" ${EXTRA_OPTS:-}"
export CUDA_VISIBLE_DEVICES=${GPUS}
export TOKENIZERS_PARALLELISM=false
mkdir -p "${CACHE_DIR}"
LOG_FILE="${CACHE_DIR}/cache.log"
if [ "${NODE_RANK:-0}" != 0 ]; then
    LOG_FILE="${CACHE_DIR}/cache-node${NODE_RANK}.log"
fi
# a failing rank's cause comes last, after torchrun's report (code/todi/failures.py, as in train_launch.sh)
export TODI_ERROR_DIR="${CACHE_DIR}/.failures"
rm -f "${TODI_ERROR_DIR}"/rank*.txt
CMD="torchrun --nproc_per_node ${NPROC} --nnodes ${NNODES} --node_rank ${NODE_RANK} --master_addr ${MASTER_ADDR} --master_port ${MASTER_PORT} ${BASE_PATH}/code/cache_teacher.py ${OPTS}"
echo "${CMD}" | tee -a "${LOG_FILE}"
status=0
${CMD} 2>&1 | tee -a "${LOG_FILE}" || status=$?
if [ "${status}" -ne 0 ]; then
    python3 "${BASE_PATH}/code/todi/failures.py" "${TODI_ERROR_DIR}" "teacher cache (node ${NODE_RANK})" "${status}" 2>&1 \
        | tee -a "${LOG_FILE}" >&2 || true
    exit "${status}"
fi
rmdir "${TODI_ERROR_DIR}" 2>/dev/null || true
