# Shared body of run_eval.sh and run_eval_lora.sh (sourced, not run): the papers' protocol (its settings
# below, each can be set from the environment), then one evaluate.py run per set with every seed (the
# model is loaded once per set), or with BACKEND=vllm one run for all sets (every set and seed in one
# vLLM engine call per rank; the same answers in fp32). An EVAL_SETS entry that is neither one of the papers' sets nor a folder
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
BACKEND=${BACKEND:-hf}   # hf: the seeded HF sampler (the reference); vllm: its answers (token-identical in
                         # fp32) at vLLM's speed, needs pip install -e '.[vllm]' (docs/evaluation.md)
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.9}   # vllm: device memory share of each rank's engine
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
    export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-ERROR}   # BACKEND=vllm: its warnings and errors only
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}

if [[ ${BACKEND} != hf && ${BACKEND} != vllm ]]; then
    echo "error: BACKEND=${BACKEND}: expected hf (the seeded HF sampler) or vllm" >&2
    exit 2
fi
if [[ ${BACKEND} == vllm ]] && ! python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"; then
    echo "error: BACKEND=vllm: vLLM is not installed for $(command -v python3); install it with pip install -e '.[vllm]' (GPU), or the CPU build as docs/evaluation.md says" >&2
    exit 2
fi
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

# run_evaluate LABEL ARGS...: evaluate.py with the protocol's flags (python3 for one process, torchrun
# for more); a failure stops the script with its cause (after torchrun's report) and exit code
run_evaluate() {
    local label=$1 status=0
    shift
    if [[ ${NPROC} -eq 1 ]]; then
        LAUNCH=(python3)   # one process: no launcher, its own error line is the last one
    else
        LAUNCH=(torchrun --standalone --nproc_per_node "${NPROC}")
    fi
    # a failing rank records its cause there (code/todi/util/failures.py); printed last, after torchrun's report
    TODI_ERROR_DIR=$(mktemp -d)
    export TODI_ERROR_DIR
    # shellcheck disable=SC2086  # SEEDS is a list
    "${LAUNCH[@]}" "${BASE_PATH}/code/evaluate.py" \
        "${MODEL_ARGS[@]}" "$@" \
        --seed ${SEEDS} --eval-batch-size "${BATCH}" --dtype "${DTYPE}" \
        --backend "${BACKEND}" --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION}" \
        --max-length "${MAX_LENGTH}" --max-prompt-length "${MAX_PROMPT_LENGTH}" \
        --do-sample --top-k 0 --top-p 1.0 --temperature 1.0 --no-repeat-ngram-size "${NO_REPEAT_NGRAM_SIZE}" \
        --save-dir "${EVAL_OUT}" || status=$?
    if [[ ${status} -ne 0 ]]; then
        if [[ ${NPROC} -ne 1 ]]; then
            python3 "${BASE_PATH}/code/todi/util/failures.py" "${TODI_ERROR_DIR}" "evaluation of ${label}" "${status}" >&2 || true
        fi
        rm -rf "${TODI_ERROR_DIR}"
        exit "${status}"
    fi
    rm -rf "${TODI_ERROR_DIR}"
}

found_dirs=()
found_names=()
found_nums=()
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
    found_dirs+=("${EVAL_DATA_DIR}/${set}")
    found_names+=("${set}")
    found_nums+=("${DATA_NUM}")
done
evaluated=${#found_names[@]}
if [[ ${BACKEND} == vllm && ${evaluated} -gt 0 ]]; then
    # one engine start, and every (set, seed) in one engine call per rank
    run_evaluate "${found_names[*]}" --data-dir "${found_dirs[@]}" --data-names "${found_names[@]}" \
        --data-num "${found_nums[@]}"
else
    for i in "${!found_names[@]}"; do
        run_evaluate "${found_names[i]}" --data-dir "${found_dirs[i]}" --data-names "${found_names[i]}" \
            --data-num "${found_nums[i]}"
    done
fi
if [[ ${evaluated} -eq 0 ]]; then
    echo "error: none of the sets (${EVAL_SETS}) has data under ${EVAL_DATA_DIR}" >&2
    exit 2
fi
if [[ ${#skipped[@]} -gt 0 ]]; then
    echo "skipped (no data under ${EVAL_DATA_DIR}): ${skipped[*]}"
fi
echo "results in ${EVAL_OUT}; table: python ${BASE_PATH}/code/report.py ${EVAL_OUT}"
