#!/usr/bin/env bash
# Download the paper's models from the Hugging Face Hub into model_hub/<type>/<name>/ (needs internet
# and `huggingface_hub`, installed with transformers). Llama-2 is gated: accept its licence on the
# Hub and log in first (`huggingface-cli login` or HF_TOKEN). Usage:
#   bash scripts/download_models.sh            # all of them
#   MODELS="gpt2-base gpt2-xlarge" bash scripts/download_models.sh
set -eo pipefail

BASE_PATH=${BASE_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
MODEL_HUB=${MODEL_HUB:-${BASE_PATH}/model_hub}
PYTHON=${PYTHON:-python3}
MODELS=${MODELS:-gpt2-base gpt2-xlarge tinyllama-1.1b-3T llama2-7b-hf}

# local name -> (directory under model_hub, Hub repository)
declare -A DIRS=(
    [gpt2-base]=gpt2/gpt2-base
    [gpt2-xlarge]=gpt2/gpt2-xlarge
    [tinyllama-1.1b-3T]=tinyllama/tinyllama-1.1b-3T
    [llama2-7b-hf]=llama2/llama2-7b-hf
)
declare -A REPOS=(
    [gpt2-base]=openai-community/gpt2
    [gpt2-xlarge]=openai-community/gpt2-xl
    [tinyllama-1.1b-3T]=TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T
    [llama2-7b-hf]=meta-llama/Llama-2-7b-hf
)

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
