# Sourced by the training scripts (gpt2/*.sh, tinyllama/*.sh; the KD ones through kd_common.sh) right
# after their GPUS, before their recipe: the launcher (common.sh), then the runtime every run shares:
# bf16 on GPUs, fp32 on the CPU, with the DeepSpeed config of ZeRO stage ZERO_STAGE; the log interval,
# the generations per dev prompt, extra flags and plug-ins. Every setting can be set from the environment.
# Also the parts of every run's folder name (run_name_tail, run_folder_name: below).
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# runtime
PRECISION=${PRECISION:-$(if [ -n "${GPUS}" ]; then echo bf16; else echo fp32; fi)}
ZERO_STAGE=${ZERO_STAGE:-1}
DS_CONFIG=${DS_CONFIG:-${BASE_PATH}/configs/deepspeed/ds_config_zero${ZERO_STAGE}_${PRECISION}.json}
LOG_INTERVAL=${LOG_INTERVAL:-50}
EVAL_GEN_REPEAT=${EVAL_GEN_REPEAT:-3}
EXTRA_OPTS=${EXTRA_OPTS:-}   # more flags of code/distillation.py, e.g. "--kd-impl chunked"
PLUGINS=${PLUGINS:-}         # space-separated Python files or modules imported first (one --plugin each), e.g. ones that register objectives

# The run's folder name (the scripts' SETTING) ends with what else tells runs apart: the seed, the data
# set (DATA_DIR's folder name) and the lengths, e.g. __seed=10__data=dolly__len=512-256.
run_name_tail() {
    printf '__seed=%s__data=%s__len=%s-%s' "${SEED}" "$(basename "${DATA_DIR}")" "${MAX_LENGTH}" "${MAX_PROMPT_LENGTH}"
}

# NAME as a folder name: NAME itself, or, past the file systems' limit (255 bytes), its start and its
# end around a checksum of the whole (still one folder per name; args.json holds every setting).
run_folder_name() {
    local LC_ALL=C name=$1 limit=255 sum head tail
    if [ "${#name}" -le "${limit}" ]; then
        printf '%s' "${name}"
        return
    fi
    sum=$(printf '%s' "${name}" | cksum | cut -d ' ' -f 1)
    tail=$(( (limit - ${#sum} - 2) / 2 ))
    head=$(( limit - ${#sum} - 2 - tail ))
    printf '%s~%s~%s' "${name:0:${head}}" "${sum}" "${name:${#name}-${tail}}"
}
