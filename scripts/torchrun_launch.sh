# Sourced by train_launch.sh and cache_launch.sh: defines launch_torchrun, which runs one entry point
# under torchrun with the sourcing script's NPROC, NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT.
#   launch_torchrun ENTRY RUN_DIR LOG_NAME WHAT ARGS...
# The output goes to the terminal and to RUN_DIR/LOG_NAME.log (RUN_DIR/LOG_NAME-node<N>.log on a node
# other than the first, so that nodes sharing RUN_DIR never write into one file). A failing rank
# writes its cause (one "error:" line) to RUN_DIR/.failures/rank<R>.txt (code/todi/util/failures.py);
# after torchrun's report the earliest cause of any node is printed as the last lines, and the
# shell exits with torchrun's status.
# shellcheck shell=bash disable=SC2154   # the variables come from the sourcing script
launch_torchrun() {
    local entry=$1 run_dir=$2 log_name=$3 what=$4
    shift 4
    local log_file="${run_dir}/${log_name}.log"
    if [ "${NODE_RANK:-0}" != 0 ]; then
        log_file="${run_dir}/${log_name}-node${NODE_RANK}.log"
    fi
    export TODI_ERROR_DIR="${run_dir}/.failures"
    rm -f "${TODI_ERROR_DIR}"/rank*.txt
    local cmd="torchrun --nproc_per_node ${NPROC} --nnodes ${NNODES} --node_rank ${NODE_RANK} --master_addr ${MASTER_ADDR} --master_port ${MASTER_PORT} ${entry} $*"
    echo "${cmd}" | tee -a "${log_file}"
    local status=0
    ${cmd} 2>&1 | tee -a "${log_file}" || status=$?
    if [ "${status}" -ne 0 ]; then
        python3 "${BASE_PATH}/code/todi/util/failures.py" "${TODI_ERROR_DIR}" "${what} (node ${NODE_RANK})" "${status}" 2>&1 \
            | tee -a "${log_file}" >&2 || true
        exit "${status}"
    fi
    rmdir "${TODI_ERROR_DIR}" 2>/dev/null || true
}
