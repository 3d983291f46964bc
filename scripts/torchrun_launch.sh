# Sourced by train_launch.sh and cache_launch.sh: defines launch_torchrun, which runs one entry point
# under torchrun with the sourcing script's GPUS, NPROC, NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT.
#   launch_torchrun ENTRY RUN_DIR LOG_NAME WHAT ARGS...
# First, before RUN_DIR is made: GPUS (exported as CUDA_VISIBLE_DEVICES) listing more GPUs than torch
# sees is an error naming GPUS= (explicitly empty: the CPU), exit code 2; nothing falls back to the CPU.
# The output goes to the terminal and to RUN_DIR/LOG_NAME.log (RUN_DIR/LOG_NAME-node<N>.log on a node
# other than the first, so that nodes sharing RUN_DIR never write into one file). A failing rank
# writes its cause (one "error:" line) to RUN_DIR/.failures/rank<R>.txt (code/todi/util/failures.py);
# after torchrun's report (in the log only, unless VERBOSE=1) the earliest cause of any node is
# printed as the last lines, and the shell exits with torchrun's status. A training run stopped by
# --stop-after-iters leaves RUN_DIR/PAUSED (todi.training.resume): its line is printed last and the
# shell exits with PAUSED_EXIT_CODE.
# Quiet unless VERBOSE=1: the log has one line per event (progress bars go to the terminal only, and
# only when the output is one: code/todi/util/log.py, run as the tee), the ranks leave out the
# libraries' per-process notices and record a failure's cause without printing it, and torchrun's own
# lines and failure report reach the log but not the terminal (which gets the command in short), so the
# launcher's summary is the one place the cause appears. VERBOSE=1: everything on the terminal.
# shellcheck shell=bash disable=SC2154   # the variables come from the sourcing script
PAUSED_EXIT_CODE=3   # todi.training.resume.PAUSED_EXIT_CODE: stopped by --stop-after-iters, rerun to continue
UTIL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../code/todi/util" && pwd)   # this repository's, whatever BASE_PATH

# Exit (code 2) unless torch sees at least as many CUDA devices as GPUS lists; GPUS empty: the CPU.
require_gpus() {
    [ -z "${GPUS}" ] && return 0
    local listed visible
    listed=$(echo "${GPUS}" | tr ',' '\n' | grep -c .)
    visible=$(CUDA_VISIBLE_DEVICES=${GPUS} python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null \
              | tail -n 1)
    if [ "${visible:-0}" -lt "${listed}" ]; then
        echo "error: GPUS=${GPUS} lists ${listed} GPU(s) but ${visible:-0} CUDA device(s) are visible;" \
             "set GPUS= (explicitly empty) to run on the CPU, or GPUS to GPUs that exist (nvidia-smi -L)" >&2
        exit 2
    fi
}

launch_torchrun() {
    local entry=$1 run_dir=$2 log_name=$3 what=$4
    shift 4
    require_gpus
    mkdir -p "${run_dir}"
    rm -f "${run_dir}/PAUSED"   # a marker of an earlier invocation
    local log_file="${run_dir}/${log_name}.log"
    if [ "${NODE_RANK:-0}" != 0 ]; then
        log_file="${run_dir}/${log_name}-node${NODE_RANK}.log"
    fi
    export TODI_ERROR_DIR="${run_dir}/.failures"
    rm -f "${TODI_ERROR_DIR}"/rank*.txt
    local cmd="torchrun --nproc_per_node ${NPROC} --nnodes ${NNODES} --node_rank ${NODE_RANK} --master_addr ${MASTER_ADDR} --master_port ${MASTER_PORT} ${entry} $*"
    local -x TODI_PROGRESS=off   # todi.util.log: progress bars on this terminal (the ranks have none of their own)
    if [ -t 1 ]; then
        { TODI_PROGRESS=$(tty <&3 || echo off); } 3>&1   # the terminal that is the output
    fi
    local quiet="" report_in=()   # report_in: where the launcher's summary says torchrun's report is
    if [ "${VERBOSE:-0}" = 1 ]; then
        echo "${cmd}" | tee -a "${log_file}"
    else
        quiet=--quiet report_in=("${log_file}")
        local -x TODI_QUIET=1 TODI_CAUSE_BY_LAUNCHER=1   # todi.util.log, todi.util.failures
        local -x HF_HUB_DISABLE_PROGRESS_BARS=${HF_HUB_DISABLE_PROGRESS_BARS:-1}   # transformers' loading/saving bars
        if [ -z "${GPUS}" ]; then   # the CPU, chosen: DeepSpeed then warns no rank that it detected no GPU
            local -x DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
        fi
        if [ "${NPROC}" -gt 1 ]; then   # torchrun's own default, without its banner
            local -x OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        fi
        echo "${cmd}" >> "${log_file}"
        echo "torchrun: ${NPROC} process(es) on node ${NODE_RANK} of ${NNODES}: ${entry##*/} (the command: ${log_file})"
    fi
    local status=0
    # shellcheck disable=SC2086   # quiet: one flag or none
    ${cmd} 2>&1 | python3 "${UTIL_DIR}/log.py" "${log_file}" ${quiet} || status=$?
    if [ "${status}" -ne 0 ]; then
        python3 "${UTIL_DIR}/failures.py" "${TODI_ERROR_DIR}" "${what} (node ${NODE_RANK})" "${status}" \
            "${report_in[@]}" 2>&1 | tee -a "${log_file}" >&2 || true
        exit "${status}"
    fi
    rmdir "${TODI_ERROR_DIR}" 2>/dev/null || true
    if [ -f "${run_dir}/PAUSED" ]; then   # written by global rank 0 before every rank exits 0
        tee -a "${log_file}" < "${run_dir}/PAUSED"
        exit "${PAUSED_EXIT_CODE}"
    fi
}
