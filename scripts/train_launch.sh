# Sourced by the training scripts (gpt2/*.sh, tinyllama/*.sh) once their settings are made and OPTS
# holds their own flags (teacher, KD, LoRA, gradient checkpointing): adds the flags every run shares,
# then launches code/distillation.py under torchrun, printing to the terminal and to train.log
# (train-node<N>.log on the other nodes of a multi-node run). On failure the last lines, on the
# terminal and in the log, are the first cause, after torchrun's report; the exit code is torchrun's.
# With a KD objective in OPTS (--kd-objective), it also passes the objective's parameters: a flag
# for each of these variables that is set and non-empty (empty: the objective's registry default),
#   TODI_BETA → --todi-beta, SKEW_LAMBDA → --skew-lambda, ADAPTIVE_KL_ALPHA → --adaptive-kl-alpha,
#   GJSD_BETA → --gjsd-beta, AB_ALPHA → --ab-alpha, AB_BETA → --ab-beta,
# and OBJ_ARGS verbatim (any other objective flag, e.g. a plug-in's "--scaled-gamma 2"). A parameter
# of another objective than the chosen one is an error of distillation.py, so set only the chosen
# one's. PLUGINS (space-separated Python files or modules) become one --plugin each, for every script.
# shellcheck shell=bash disable=SC2154   # the variables come from the sourcing script

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
mkdir -p "${SAVE_PATH}"
# The log: train.log; on a node other than the first (NODE_RANK > 0, same SAVE_PATH on shared storage)
# train-node<NODE_RANK>.log, so that two nodes never write into one file.
LOG_FILE="${SAVE_PATH}/train.log"
if [ "${NODE_RANK:-0}" != 0 ]; then
    LOG_FILE="${SAVE_PATH}/train-node${NODE_RANK}.log"
fi
# A failing rank writes its cause (one "error:" line) to ${TODI_ERROR_DIR}/rank<R>.txt (code/todi/failures.py);
# after torchrun's report, the earliest cause (of any node, on shared storage) is printed as the last lines.
export TODI_ERROR_DIR="${SAVE_PATH}/.failures"
rm -f "${TODI_ERROR_DIR}"/rank*.txt
CMD="torchrun --nproc_per_node ${NPROC} --nnodes ${NNODES} --node_rank ${NODE_RANK} --master_addr ${MASTER_ADDR} --master_port ${MASTER_PORT} ${BASE_PATH}/code/distillation.py ${OPTS}"
echo "${CMD}" | tee -a "${LOG_FILE}"
status=0
${CMD} 2>&1 | tee -a "${LOG_FILE}" || status=$?
if [ "${status}" -ne 0 ]; then
    python3 "${BASE_PATH}/code/todi/failures.py" "${TODI_ERROR_DIR}" "training (node ${NODE_RANK})" "${status}" 2>&1 \
        | tee -a "${LOG_FILE}" >&2 || true
    exit "${status}"
fi
rmdir "${TODI_ERROR_DIR}" 2>/dev/null || true
