# Shared body of run_eval.sh and run_eval_lora.sh (sourced, not run): the papers' protocol (its settings
# below, each can be set from the environment), then one evaluate.py run per set with every seed (the
# model is loaded once per set). An EVAL_SETS entry that is neither one of the papers' sets nor a folder
# with data is an error before anything runs; a paper set without data is skipped (listed again at the
# end). EVAL_NUM=N evaluates the first N examples of each set. NPROC=1 runs python
# directly, more ranks torchrun; a failure stops the loop and ends with its cause (after torchrun's
# report) and a non-zero exit code.
# Needs MODEL_ARGS, BATCH, BASE_PATH and EVAL_OUT (NPROC optional).
# shellcheck shell=bash

EVAL_DATA_DIR=${EVAL_DATA_DIR:-${BASE_PATH}/data}
PAPER_SETS="dolly self-inst vicuna sinst/11_ uinst/11_"   # todi.evaluation.results.PAPER_SETS
EVAL_SETS=${EVAL_SETS:-${PAPER_SETS}}
EVAL_NUM=${EVAL_NUM:-}                 # empty: every example (UnNI: its first 10,000, the official protocol)
UNI_NUM=10000
SEEDS=${SEEDS:-"10 20 30 40 50"}
MAX_LENGTH=${MAX_LENGTH:-512}               # prompt + answer tokens (official: 512)
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-256}  # answers get MAX_LENGTH - MAX_PROMPT_LENGTH tokens
NO_REPEAT_NGRAM_SIZE=${NO_REPEAT_NGRAM_SIZE:-6}
DTYPE=${DTYPE:-fp32}   # fp32: answers independent of batch size and GPU count; bf16: official, faster
GPUS=${GPUS-0,1,2,3}   # explicitly empty: CPU

export CUDA_VISIBLE_DEVICES=${GPUS}
if [[ -z ${GPUS} ]]; then
    NPROC=${NPROC:-1}
else
    IFS=, read -ra _GPU_LIST <<< "${GPUS}"
    NPROC=${NPROC:-${#_GPU_LIST[@]}}
fi
export TOKENIZERS_PARALLELISM=false
export PYTHONIOENCODING=utf-8
# quiet unless VERBOSE=1 (as training): no per-process library bars or accelerator notices
if [ "${VERBOSE:-0}" != 1 ]; then
    export HF_HUB_DISABLE_PROGRESS_BARS=${HF_HUB_DISABLE_PROGRESS_BARS:-1} TODI_QUIET=${TODI_QUIET:-1}
    if [ -z "${GPUS}" ]; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}

if [[ -n ${EVAL_NUM} && ! ${EVAL_NUM} =~ ^[1-9][0-9]*$ ]]; then
    echo "error: EVAL_NUM=${EVAL_NUM}: expected a positive number of examples per set (empty: all)" >&2
    exit 2
fi
unknown=()
for set in ${EVAL_SETS}; do
    if [[ ! -f ${EVAL_DATA_DIR}/${set}/valid.jsonl && " ${PAPER_SETS} " != *" ${set} "* ]]; then
        unknown+=("${set}")
    fi
done
if [[ ${#unknown[@]} -gt 0 ]]; then
    found=$(cd "${EVAL_DATA_DIR}" 2>/dev/null && find . -mindepth 2 -maxdepth 3 -name valid.jsonl | sed -e 's|^\./||' -e 's|/valid.jsonl$||' | sort | tr '\n' ' ')
    echo "error: unknown EVAL_SETS entry: ${unknown[*]}; known: the papers' ${PAPER_SETS}, or a folder of ${EVAL_DATA_DIR} with valid.jsonl${found:+ (there: ${found% })}" >&2
    exit 2
fi

evaluated=0
skipped=()
for set in ${EVAL_SETS}; do
    if [[ ! -f ${EVAL_DATA_DIR}/${set}/valid.jsonl ]]; then
        echo "skipping ${set}: ${EVAL_DATA_DIR}/${set}/valid.jsonl not found (python code/prepare_data.py --help)"
        skipped+=("${set}")
        continue
    fi
    DATA_NUM=${EVAL_NUM:--1}
    if [[ ${set} == uinst/* && ( -z ${EVAL_NUM} || ${EVAL_NUM} -gt ${UNI_NUM} ) ]]; then
        DATA_NUM=${UNI_NUM}   # the official protocol scores UnNI's first 10,000 examples
    fi
    if [[ ${NPROC} -eq 1 ]]; then
        LAUNCH=(python3)   # one process: no launcher, its own error line is the last one
    else
        LAUNCH=(torchrun --standalone --nproc_per_node "${NPROC}")
    fi
    # a failing rank records its cause there (code/todi/util/failures.py); printed last, after torchrun's report
    TODI_ERROR_DIR=$(mktemp -d)
    export TODI_ERROR_DIR
    status=0
    # shellcheck disable=SC2086  # SEEDS is a list
    "${LAUNCH[@]}" "${BASE_PATH}/code/evaluate.py" \
        "${MODEL_ARGS[@]}" \
        --data-dir "${EVAL_DATA_DIR}/${set}" --data-names "${set}" --data-num "${DATA_NUM}" \
        --seed ${SEEDS} --eval-batch-size "${BATCH}" --dtype "${DTYPE}" \
        --max-length "${MAX_LENGTH}" --max-prompt-length "${MAX_PROMPT_LENGTH}" \
        --do-sample --top-k 0 --top-p 1.0 --temperature 1.0 --no-repeat-ngram-size "${NO_REPEAT_NGRAM_SIZE}" \
        --save-dir "${EVAL_OUT}" || status=$?
    if [[ ${status} -ne 0 ]]; then
        if [[ ${NPROC} -ne 1 ]]; then
            python3 "${BASE_PATH}/code/todi/util/failures.py" "${TODI_ERROR_DIR}" "evaluation of ${set}" "${status}" >&2 || true
        fi
        rm -rf "${TODI_ERROR_DIR}"
        exit "${status}"
    fi
    rm -rf "${TODI_ERROR_DIR}"
    evaluated=$((evaluated + 1))
done
if [[ ${evaluated} -eq 0 ]]; then
    echo "error: none of the sets (${EVAL_SETS}) has data under ${EVAL_DATA_DIR}" >&2
    exit 2
fi
if [[ ${#skipped[@]} -gt 0 ]]; then
    echo "skipped (no data under ${EVAL_DATA_DIR}): ${skipped[*]}"
fi
echo "results in ${EVAL_OUT}; table: python ${BASE_PATH}/code/report.py ${EVAL_OUT}"
