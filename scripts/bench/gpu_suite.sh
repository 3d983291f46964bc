#!/usr/bin/env bash
# Every GPU figure of README on one GPU, in one command (aim: under 8 minutes on an H100):
#   bash scripts/bench/gpu_suite.sh
# 1. the CUDA Triton kernel tests, compiled (not interpreted)
# 2. the loss table: 2048 tokens x 50,257 and 262,144 vocabularies, bf16, every objective (bench_loss.py)
# 3. the KD step against the CE-only step, GPT-2 base student / XL teacher shapes (bench_step.py)
# 4. a short epoch, default and --group-by-length batches (bench_epoch.sh)
# 5. generation (bench_engines.py): HF sampler vs vLLM token equality on 20 Dolly prompts in fp32, the
#    bf16 difference count, prompts/s of both engines on Dolly x 1 seed with GPT-2 base shapes
# 6. on-policy steps (bench_onpolicy.py): GKD (lambda 0.5) with GPT-2 base <- XL shapes, bf16, the time split
#    generation / teacher / student with HF and with vLLM rollouts (goal: generation <= 30% of a step)
# Writes ${OUT_DIR}/gpu_suite.json (every step's results) and gpu_suite.md (one table); a failing step
# is recorded as failed and the suite goes on. Needs the test extra, Triton and vLLM
# (pip install -e '.[test,vllm]'). DRY_RUN=1 prints the steps and checks the inputs, running nothing.
# Every setting below can be set from the environment.
set -euo pipefail

BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PYTHON=${PYTHON:-python3}
GPUS=${GPUS-0}                      # the one GPU the suite uses
OUT_DIR=${OUT_DIR:-${BASE_PATH}/outputs/bench/gpu_suite}
MODEL_DIR=${MODEL_DIR:-${BASE_PATH}/model_hub/gpt2/gpt2-base}   # config + tokenizer: GPT-2 base shapes
DOLLY=${DOLLY:-${BASE_PATH}/data/dolly}                          # valid.jsonl (generation), train.jsonl (epoch)
LOSS_TOKENS=${LOSS_TOKENS:-2048}
LOSS_VOCABS=${LOSS_VOCABS:-50257,262144}
EPOCH_STEPS=${EPOCH_STEPS:-30}      # timed optimizer steps of the short epoch
EQUALITY_PROMPTS=${EQUALITY_PROMPTS:-20}
SPEED_PROMPTS=${SPEED_PROMPTS:-500} # Dolly x 1 seed
ONPOLICY_STEPS=${ONPOLICY_STEPS:-16}   # timed optimizer steps of each on-policy run (after 4 warm-up steps)
DRY_RUN=${DRY_RUN:-0}

export CUDA_VISIBLE_DEVICES=${GPUS}
export TOKENIZERS_PARALLELISM=false
export VLLM_USE_V2_MODEL_RUNNER=0   # the V1 runner, whose processor interface the engine uses (vllm_engine.py)
unset TRITON_INTERPRET              # compiled kernels, not the interpreter CI runs

missing=()
for path in "${MODEL_DIR}/config.json" "${DOLLY}/valid.jsonl" "${DOLLY}/train.jsonl"; do
    [[ -f ${path} ]] || missing+=("${path}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "error: not found: ${missing[*]} (MODEL_DIR needs a config and tokenizer, DOLLY the prepared Dolly set)" >&2
    exit 2
fi
if [[ ${DRY_RUN} != 1 ]] && ! "${PYTHON}" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA GPU visible (GPUS=${GPUS}); the suite measures GPU figures (DRY_RUN=1 lists its steps)" >&2
    exit 2
fi
mkdir -p "${OUT_DIR}"

STEPS=(triton loss step epoch generation onpolicy)
declare -A COMMAND=(
    [triton]="${PYTHON} -m pytest -q ${BASE_PATH}/tests/unit/kernels/test_kernels_triton.py --junitxml ${OUT_DIR}/triton.xml"
    [loss]="${PYTHON} ${BASE_PATH}/scripts/bench/bench_loss.py --tokens ${LOSS_TOKENS} --vocab ${LOSS_VOCABS} --dtype bf16 --device cuda --out ${OUT_DIR}/loss.json"
    [step]="${PYTHON} ${BASE_PATH}/scripts/bench/bench_step.py --models gpt2 --objectives ce,ToDi --device cuda --out ${OUT_DIR}/step.json"
    [epoch]="env GPUS=${GPUS%%,*} STEPS=${EPOCH_STEPS} WARMUP=5 MODES='default grouped' STUDENT_CONFIG=${MODEL_DIR} DATA=${DOLLY}/train.jsonl OUT_DIR=${OUT_DIR}/epoch bash ${BASE_PATH}/scripts/bench/bench_epoch.sh"
    [generation]="${PYTHON} ${BASE_PATH}/scripts/bench/bench_engines.py --model-config ${MODEL_DIR} --data ${DOLLY}/valid.jsonl --equality-prompts ${EQUALITY_PROMPTS} --num-prompts ${SPEED_PROMPTS} --out ${OUT_DIR}/generation.json"
    [onpolicy]="${PYTHON} ${BASE_PATH}/scripts/bench/bench_onpolicy.py --student-config ${MODEL_DIR} --data ${DOLLY}/train.jsonl --steps ${ONPOLICY_STEPS} --warmup 4 --out ${OUT_DIR}/onpolicy.json"
)

: > "${OUT_DIR}/status.tsv"
for step in "${STEPS[@]}"; do
    echo "== ${step}: ${COMMAND[${step}]}"
    if [[ ${DRY_RUN} == 1 ]]; then
        printf '%s\tdry-run\t0\n' "${step}" >> "${OUT_DIR}/status.tsv"
        continue
    fi
    start=${SECONDS}
    status=ok
    bash -c "${COMMAND[${step}]}" > "${OUT_DIR}/${step}.log" 2>&1 || status=failed
    printf '%s\t%s\t%s\n' "${step}" "${status}" "$((SECONDS - start))" >> "${OUT_DIR}/status.tsv"
    echo "   ${status} in $((SECONDS - start)) s (log: ${OUT_DIR}/${step}.log)"
done
"${PYTHON}" "${BASE_PATH}/scripts/bench/gpu_suite_report.py" "${OUT_DIR}"
