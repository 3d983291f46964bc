# Sourced by the training scripts (gpt2/*.sh, tinyllama/*.sh; the KD ones through kd_common.sh) right
# after their GPUS, before their recipe: the launcher (common.sh), then the runtime every run shares:
# bf16 on GPUs, fp32 on the CPU, with the DeepSpeed config of ZeRO stage ZERO_STAGE; the log interval,
# the generations per dev prompt, extra flags and plug-ins. Every setting can be set from the environment.
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
