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
OPTS+=" --mode ${CACHE_MODE}"
if [ "${CACHE_MODE}" = topk ]; then   # a hidden-state cache serves every temperature
    OPTS+=" --top-k ${TOP_K}"
    OPTS+=" --kd-temperature ${KD_TEMP}"
fi
OPTS+=" --max-length ${MAX_LENGTH}"
OPTS+=" --max-prompt-length ${MAX_PROMPT_LENGTH}"
if [ -n "${CACHE_DTYPE}" ]; then
    OPTS+=" --dtype ${CACHE_DTYPE}"
fi
OPTS+=" --batch-size ${BATCH_SIZE}"
OPTS+=" ${EXTRA_OPTS:-}"
export CUDA_VISIBLE_DEVICES=${GPUS}
export TOKENIZERS_PARALLELISM=false
source "$(dirname "${BASH_SOURCE[0]}")/torchrun_launch.sh"
# shellcheck disable=SC2086   # OPTS is a list of flags
launch_torchrun "${BASE_PATH}/code/cache_teacher.py" "${CACHE_DIR}" cache "teacher cache" ${OPTS}
