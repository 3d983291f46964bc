#!/usr/bin/env bash
# Download the paper's models from the Hugging Face Hub into model_hub/<type>/<name>/ (needs internet
# and `huggingface_hub`, installed with transformers). Llama-2 and Gemma 3 are gated: accept their
# licences on the Hub and log in first (`huggingface-cli login` or HF_TOKEN). Usage:
#   bash scripts/download_models.sh            # the GPT-2 and TinyLLaMA pairs (and MiniLLM's GPT-2 XL teacher)
#   MODELS="gpt2-base teacher-gpt2-1.5B" bash scripts/download_models.sh
#   MODELS="qwen2.5-7b qwen2.5-0.5b olmo-2-1124-7b olmo-2-0425-1b gemma-3-4b-pt gemma-3-1b-pt" bash scripts/download_models.sh
#   MODELS=all bash scripts/download_models.sh
set -eo pipefail

BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
MODEL_HUB=${MODEL_HUB:-${BASE_PATH}/model_hub}
PYTHON=${PYTHON:-python3}
MODELS=${MODELS:-gpt2-base gpt2-xlarge teacher-gpt2-1.5B tinyllama-1.1b-3T llama2-7b-hf}

# local name -> (directory under model_hub, Hub repository)
declare -A DIRS=(
    [gpt2-base]=gpt2/gpt2-base
    [gpt2-xlarge]=gpt2/gpt2-xlarge
    [teacher-gpt2-1.5B]=gpt2/teacher-gpt2-1.5B
    [tinyllama-1.1b-3T]=tinyllama/tinyllama-1.1b-3T
    [llama2-7b-hf]=llama2/llama2-7b-hf
    [qwen2.5-7b]=qwen2.5/qwen2.5-7b
    [qwen2.5-0.5b]=qwen2.5/qwen2.5-0.5b
    [olmo-2-1124-7b]=olmo2/olmo-2-1124-7b
    [olmo-2-0425-1b]=olmo2/olmo-2-0425-1b
    [gemma-3-4b-pt]=gemma3/gemma-3-4b-pt
    [gemma-3-1b-pt]=gemma3/gemma-3-1b-pt
    [gemma-3-270m]=gemma3/gemma-3-270m
)
declare -A REPOS=(
    [gpt2-base]=openai-community/gpt2
    [gpt2-xlarge]=openai-community/gpt2-xl
    [teacher-gpt2-1.5B]=MiniLLM/teacher-gpt2-1.5B
    [tinyllama-1.1b-3T]=TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T
    [llama2-7b-hf]=meta-llama/Llama-2-7b-hf
    [qwen2.5-7b]=Qwen/Qwen2.5-7B
    [qwen2.5-0.5b]=Qwen/Qwen2.5-0.5B
    [olmo-2-1124-7b]=allenai/OLMo-2-1124-7B
    [olmo-2-0425-1b]=allenai/OLMo-2-0425-1B
    [gemma-3-4b-pt]=google/gemma-3-4b-pt
    [gemma-3-1b-pt]=google/gemma-3-1b-pt
    [gemma-3-270m]=google/gemma-3-270m
)
if [ "${MODELS}" = all ]; then
    MODELS="${!DIRS[*]}"
fi

for name in ${MODELS}; do
    if [ -z "${DIRS[$name]:-}" ]; then
        echo "unknown model ${name}; known: ${!DIRS[*]}" >&2
        exit 2
    fi
    target="${MODEL_HUB}/${DIRS[$name]}"
    echo "==> ${REPOS[$name]} -> ${target}"
    "${PYTHON}" - "${REPOS[$name]}" "${target}" <<'PY'
import sys

from huggingface_hub import snapshot_download

from pathlib import Path

repo, target = sys.argv[1], sys.argv[2]
# config, tokenizer and the PyTorch weights: safetensors when the repository has them, else .bin
common = ["*.json", "*.model", "*.txt"]
snapshot_download(repo, local_dir=target, allow_patterns=common + ["*.safetensors"], ignore_patterns=["*onnx*"])
if not any(Path(target).glob("*.safetensors")):
    snapshot_download(repo, local_dir=target, allow_patterns=common + ["pytorch_model*.bin"])
PY
done
