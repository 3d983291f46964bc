# Sourced by the training scripts (gpt2/*.sh, tinyllama/*.sh) once their settings are made and OPTS
# holds their own flags (teacher, KD, LoRA, gradient checkpointing): adds the flags every run shares,
# then launches code/distillation.py under torchrun, printing to the terminal and to train.log
# (train-node<N>.log on the other nodes of a multi-node run). On failure the last lines, on the
# terminal and in the log, are the first cause, after torchrun's report; the exit code is torchrun's.
# GPUS naming GPUs that are not there is an error before anything starts; a run paused by
# --stop-after-iters exits 3 (both: torchrun_launch.sh).
# With a KD objective in OPTS (--kd-objective), it first adds AdaKD's flags when ADAKD=1 and the
# on-policy flags when DATA_MODE is gkd or distillm (their settings: kd_common.sh), and it passes the objective's parameters: a flag
# for each of these variables that is set and non-empty (empty: the objective's registry default),
#   TODI_BETA → --todi-beta, SKEW_LAMBDA → --skew-lambda, ADAPTIVE_KL_ALPHA → --adaptive-kl-alpha,
#   GJSD_BETA → --gjsd-beta, AB_ALPHA → --ab-alpha, AB_BETA → --ab-beta,
# and OBJ_ARGS verbatim (any other objective flag, e.g. a plug-in's "--scaled-gamma 2"). A parameter
# of another objective than the chosen one is an error of distillation.py, so set only the chosen
# one's. PLUGINS (space-separated Python files or modules) become one --plugin each, for every script.
# shellcheck shell=bash disable=SC2154   # the variables come from the sourcing script

# AdaKD around the objective (KD scripts only), right after the script's own flags
if [[ ${OPTS} == *" --kd-objective "* && ${ADAKD:-0} == 1 ]]; then
    OPTS+=" --adakd --adakd-c ${ADAKD_C} --adakd-ema ${ADAKD_EMA} --adakd-eps ${ADAKD_EPS} --adakd-delta ${ADAKD_DELTA}"
    OPTS+=" --adakd-warmup ${ADAKD_WARMUP} --adakd-min-ratio ${ADAKD_MIN_RATIO} --adakd-difficulty ${ADAKD_DIFFICULTY}"
fi
# on-policy data (KD scripts only; settings: kd_common.sh): the teacher scores the sampled responses,
# so it is loaded even beside a TEACHER_CACHE (which then serves the dataset's share)
if [[ ${OPTS} == *" --kd-objective "* && ${DATA_MODE:-fixed} != fixed ]]; then
    OPTS+=" --data-mode ${DATA_MODE} --student-gen-ratio ${STUDENT_GEN_RATIO} --init-threshold ${INIT_THRESHOLD}"
    OPTS+=" --loss-eps ${LOSS_EPS} --replay-capacity ${REPLAY_CAPACITY} --rollout-temperature ${ROLLOUT_TEMP}"
    OPTS+=" --rollout-top-k ${ROLLOUT_TOP_K} --rollout-top-p ${ROLLOUT_TOP_P}"
    OPTS+=" --rollout-backend ${ROLLOUT_BACKEND} --rollout-sync-interval ${ROLLOUT_SYNC_INTERVAL}"
    if [ -n "${ROLLOUT_MAX_NEW_TOKENS}" ]; then OPTS+=" --rollout-max-new-tokens ${ROLLOUT_MAX_NEW_TOKENS}"; fi
    if [ "${SEQ_KD}" = 1 ]; then OPTS+=" --seq-kd"; fi
    if [[ ${OPTS} != *" --teacher-model-path "* ]]; then
        OPTS+=" --teacher-model-path ${TEACHER_MODEL_PATH}${TEACHER_PEFT_PATH:+ --teacher-peft-path ${TEACHER_PEFT_PATH}}"
    fi
fi
# model
OPTS+=" --base-path ${BASE_PATH}"
OPTS+=" --model-path ${CKPT_PATH}"
OPTS+=" --model-type ${CKPT_TYPE}"
# data
OPTS+=" --data-dir ${DATA_DIR}"
OPTS+=" --num-workers 0"
OPTS+=" --dev-num ${DEV_NUM}"
# task
OPTS+=" --task ${TASK}"
# hp
OPTS+=" --lr ${LR}"
OPTS+=" --batch-size ${BATCH_SIZE}"
OPTS+=" --eval-batch-size ${EVAL_BATCH_SIZE}"
OPTS+=" --gradient-accumulation-steps ${GRAD_ACC}"
OPTS+=" --warmup-iters 0"
OPTS+=" --lr-decay-style cosine"
OPTS+=" --weight-decay 1e-2"
OPTS+=" --clip-grad 1.0"
OPTS+=" --num-epochs ${EPOCH}"
# length
OPTS+=" --max-length ${MAX_LENGTH}"
OPTS+=" --max-prompt-length ${MAX_PROMPT_LENGTH}"
# runtime
OPTS+=" --do-train"
OPTS+=" --do-valid"
OPTS+=" --eval-gen"
OPTS+=" --eval-gen-repeat-times ${EVAL_GEN_REPEAT}"
OPTS+=" --save-interval 1"
OPTS+=" --eval-interval 1"
OPTS+=" --log-interval ${LOG_INTERVAL}"
OPTS+=" --save-dir ${SAVE_PATH}"
OPTS+=" --keep-best-n-checkpoints ${SAVE_BEST_N_CKPTS}"
OPTS+=" --criterion ${CRITERION}"
# seed
OPTS+=" --seed ${SEED}"
# deepspeed
OPTS+=" --deepspeed"
OPTS+=" --deepspeed_config ${DS_CONFIG}"
# gen
OPTS+=" --do-sample"
OPTS+=" --top-k 0"
OPTS+=" --top-p 1.0"
OPTS+=" --temperature 1.0"
# objective parameters (KD scripts only) and plug-ins
case "${OPTS}" in
    *" --kd-objective "*)
        for pair in TODI_BETA:--todi-beta SKEW_LAMBDA:--skew-lambda ADAPTIVE_KL_ALPHA:--adaptive-kl-alpha \
                    GJSD_BETA:--gjsd-beta AB_ALPHA:--ab-alpha AB_BETA:--ab-beta; do
            variable=${pair%%:*}
            if [ -n "${!variable:-}" ]; then
                OPTS+=" ${pair#*:} ${!variable}"
            fi
        done
        OPTS+=" ${OBJ_ARGS:-}"
        ;;
esac
for plugin in ${PLUGINS:-}; do
    OPTS+=" --plugin ${plugin}"
done
OPTS+=" ${EXTRA_OPTS}"

export CUDA_VISIBLE_DEVICES=${GPUS}
export WANDB_DISABLED=True
export TOKENIZERS_PARALLELISM=false
source "$(dirname "${BASH_SOURCE[0]}")/torchrun_launch.sh"
# shellcheck disable=SC2086   # OPTS is a list of flags
launch_torchrun "${BASE_PATH}/code/distillation.py" "${SAVE_PATH}" train training ${OPTS}
