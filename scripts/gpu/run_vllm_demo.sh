#!/usr/bin/env bash
# On the GPU machine, from the repository root, after stage_wheels.sh --install:
# make the random Llama, run dynamo-vllm's unit tests against the real vLLM, then the GPU test
# (`dynamo serve --engine vllm --router kv` with two workers, openai client, KV routing, abort).
# Logs go to $OUT (the device tool returns that folder) or ./gpu-out.
set -euo pipefail
source scripts/gpu/dev_env.sh
LOGS=${OUT:-$PWD/gpu-out}
mkdir -p "$LOGS"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee "$LOGS/versions.txt"
make_model
python3 -m dynamo_core.cli.main plugins | tee "$LOGS/plugins.txt"
python3 -m pytest -p no:cacheprovider -q plugins/dynamo-vllm/tests 2>&1 | tee "$LOGS/unit.txt"
DYN_TEST_LOG_DIR="$LOGS" python3 -m pytest -p no:cacheprovider -s -v tests/gpu 2>&1 | tee "$LOGS/gpu-test.txt"
